//! Quantized matmul on weights repacked at load into 8-row interleaved groups (after the idea of
//! ggml-cpu's repack.cpp `block_q4_0x8`; our own layout and kernels).
//!
//! Why: the plain-layout kernels dot one (weight row, token) pair per 8-lane accumulator, so every
//! 32-element block pays a horizontal integer reduction, an int->float conversion, a scale
//! product and an FMA per pair. Here one 32-bit lane holds one weight row: 4 consecutive quants
//! of each of 8 rows fill a 256-bit register, the token's 4 matching activation bytes are
//! broadcast to every lane, and `maddubs` + `madd` leave each row's partial dot in its own lane.
//! The per-block float work (conversion, scale, FMA) is then shared by 8 rows, and the decoded
//! weights of a block stay in registers while up to `TILE_T` tokens pass over them.
//!
//! Layout of a prepared matrix: rows are padded to a multiple of 8 (zero rows, never written
//! out) and cut into groups of 8; group g holds its `k / 32` blocks one after the other. Block:
//!
//! ```text
//! Q4_0x8 (144 bytes, as 8 plain blocks): d[8] f16 @0 (row r's scale in slot r),
//!         then 4 vectors of 32 bytes @16 + 32j: bytes 4r..4r+4 of vector j are the plain
//!         qs[4j..4j+4] of row r (low nibbles: elements 4j..4j+4, high: 16+4j..16+4j+4).
//! Q4_1x8 (160 bytes): d[8] f16 @0, m[8] f16 @16, nibble vectors as Q4_0's @32.
//! Q5_0x8 (176 bytes): as Q4_0x8, then @144 one vector of the 5th bits: bit v of byte 4r+e is
//!         the 5th bit of row r's element 4v+e (v = 0..8: the element of byte 4r+e in the v-th
//!         decoded vector, low nibbles of vectors 0..4 first), so one shift and one mask per
//!         decoded vector put it in place.
//! Q5_1x8 (192 bytes): d[8] @0, m[8] @16, nibbles @32, 5th bits @160.
//! Q8_0x8 (272 bytes, as 8 plain blocks): d[8] f16 @0, then 8 vectors of 32 bytes @16 + 32j:
//!         bytes 4r..4r+4 of vector j are row r's quants 4j..4j+4.
//! IQ4_NLx8 (144 bytes): Q4_0x8's layout; the nibbles index `KVALUES_IQ4NL`.
//! IQ4_XSx8 (1104 bytes, 8 plain blocks take 1088): d[8] f16 @0, sub-block scales @16 (`KX_SC`):
//!         for sub-block j, 8 bytes (ls_j - 32 of row r at r, i8), quants @80 (`KX_QS`): for
//!         sub-block j, 4 vectors of 32 bytes: bytes 4r..4r+4 of vector c are row r's
//!         qs[16j+4c..16j+4c+4] (low nibbles: elements 32j+4c.., high: 32j+16+4c..).
//!         The IQ4 kernels look the nibbles up (`pshufb`) as levels + 128 (unsigned, for
//!         `vpdpbusd`) and subtract 128 * sum(a), or (AVX2) as signed levels with Q8_0's sign
//!         trick.
//! Q2_Kx8 (672 bytes, as 8 plain blocks): d[8] f16 @0, dmin[8] f16 @16, scales @32 (`K2_SC`):
//!         per 16-element group g, 8 bytes (the file's byte, scale | min << 4, of row r at r),
//!         quants @160 (`K2_Q`): per group g, 32 bytes laid out as Q3_Kx8's low bits.
//! Q3_Kx8 (912 bytes, 8 plain blocks take 880): d[8] f16 @0, scales @16 (`K3_SC`): for
//!         16-element group g, 8 bytes (sc_g - 32 of row r at r, i8), low bits @144 (`K3_Q`):
//!         per group g, 32 bytes: bits 2c..2c+2 of byte 4r+e are the low 2 bits of row r's
//!         element 16g+4c+e (decoded vector c = 0..4), high bits @656 (`K3_H`): per group pair,
//!         32 bytes: bit c + 4(g%2) of byte 4r+e is that element's 3rd bit. The values are
//!         u = q + 4 * hbit in 0..8, the weight u - 4 (ggml's "minus 4 unless the hmask bit"),
//!         so Q3_K runs the Q6_K kernel's sums with a 4 * sum(a) offset instead of 32.
//! Q4_Kx8 (1184 bytes for 256 elements, 8 plain blocks take 1152): d[8] f16 @0, dmin[8] f16 @16,
//!         sub-block scales @32 (`K4_SC`): for sub-block j, 8 bytes (sc_j of row r at r),
//!         mins @96 (`K4_MIN`): for sub-block pair p, 16 bytes (m_2p, m_2p+1 of row r at 2r,
//!         2r+1), quants @160 (`K4_QS`): for pair p, 8 vectors of 32 bytes: bytes 4r..4r+4 of
//!         vector c are the plain qs[32p+4c..32p+4c+4] of row r (low nibbles: sub-block 2p,
//!         high: 2p+1). The only bytes beyond the file's are the 6-bit scales and mins widened
//!         to one byte each (+2.8%).
//! Q5_Kx8 (1440 bytes, 8 plain blocks take 1408): a Q4_Kx8 block (the low 4 bits as its
//!         nibbles), then @1184 (`K5_QH`) the 8 rows' qh as 8 vectors of 32 bytes: bytes
//!         4r..4r+4 of vector c are row r's qh[4c..4c+4], so byte e of a nibble vector c of pair
//!         p has its 5th bit at bit 2p (low nibble) or 2p+1 (high) of the same byte of qh
//!         vector c.
//! Q6_Kx8 (1680 bytes, as 8 plain blocks): d[8] f16 @0, scales @16 (`K6_SC`): for 16-element
//!         group g, 8 bytes (sc_g of row r at r, i8), quants @144 (`K6_QS`): per group g, 96
//!         bytes: the group's 6-bit values (0..63, unbiased) as 4 decoded vectors c = 0..4
//!         (bytes 4r..4r+4 of vector c: row r's elements 16g+4c..16g+4c+4), stored as two nibble
//!         vectors L0 @0, L1 @32 (vector c's low 4 bits in L(c%2), low nibble for c < 2, high
//!         for c >= 2) and one vector H @64 of their top 2 bits (vector c's at bits 2c..2c+2).
//!         Decoding is 2-3 shifts and masks per vector.
//!
//! Scales are stored once per row, not widened to the (sc, sc) i16 pairs `madd` wants: decode
//! is bound by the bytes it reads, and a byte shuffle per sub-block (shared by the tile's
//! tokens) rebuilds the pairs.
//! ```
//!
//! K-quants dot against `A8K` activations: the plain path's Q8_K (one f32 d per 256, same
//! quants) plus, per super-block, the 8 sums of quants of each 32-element sub-block (i16, for
//! the Q4_K mins) and, per 16-element group, 16 * its sum twice as an i16 pair (for the AVX2
//! kernels' Q6_K -32 offset, Q3_K -4 offset and Q2_K mins, one `madd` per group; the AVX-512
//! kernels read two groups' sums from the middle of two pairs, 8 `vpdpwssd` per super-block,
//! and their Q2_K, Q3_K and Q6_K group dots are `vpdpbusd` sums scaled per group). Per
//! super-block and row: one integer sum of scale * sub-block dot (exact in i32), then
//! acc = fma(d_w * d_a, isum, acc) (and for Q4_K acc = acc - (dmin_w * d_a) * msum, fused).
//!
//! Activations are quantized once per token row exactly as the plain path's Q8_0 (same rounding,
//! d rounded to f16), then stored as `A8` rows: quants (32 per block), d as f32, and the block's
//! integer sum of quants (Q4_0's nibbles are used unsigned: sum(q_w * a) = sum(u_w * a) - 8 sum(a),
//! so no sign trick is needed and 8 `maddubs` results add up in i16 without overflow:
//! 8 * 2 * 15 * 127 = 30480 < 32767).
//!
//! Per output, per block: acc = fma(d_w * d_a, (f32) integer dot, acc), one running accumulator
//! over the blocks in order. The plain-layout dots do the same terms in another order (8 lanes
//! summed at the end), so the results differ from them by float rounding only; they are identical
//! bit for bit whatever the thread count, tile size or chunking (each output is one lane of one
//! kernel call whose inputs do not depend on them). `scalar` below is the twin of the SIMD
//! kernels on this layout, with the same operation order (tests: bitwise equal).

// Kernels index per-token arrays (accumulators, sums) with the same token number.
#![allow(clippy::needless_range_loop)]

use super::{CpuBackend, SyncPtr};
use crate::dot::layout::{
    IQ4_NL_BYTES, IQ4_XS_BYTES, KVALUES_IQ4NL, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES,
    Q4_K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, Q8_1_BYTES, Q8_K_BYTES,
    QK, QK_K,
};
use crate::Isa;
use cria_core::tensor::AlignedBuf;
use cria_core::{DType, Tensor};
use std::sync::Arc;

/// Rows per interleaved group (one per 32-bit lane of a 256-bit register).
pub const GROUP: usize = 8;
/// Tokens per kernel call: their accumulators plus the 8 decoded weight vectors of a block fill
/// the 16 ymm registers. (AVX-512 runs two groups per call, `TILE_T2` tokens: see `vnni512`.)
pub const TILE_T: usize = 4;
/// Tokens per pair-kernel call (`Tile2`): with 32 registers, 8 tokens' accumulators fit beside
/// a block's decoded weights, so each decoded block serves twice as many tokens.
pub const TILE_T2: usize = 8;
/// Bytes of an A8 activation block: 32 quants, d (f32) @32, sum of quants (i32) @36, and
/// Q8_1's s = f16(d * sum) (as f32) @40, which the Q4_1/Q5_1 min term uses as llama.cpp does.
pub const A8_BLOCK: usize = QK + 12;
/// Bytes of an A8K activation super-block: d (f32) @0, 256 quants @4, 8 sub-block sums (i16)
/// @260, 16 pairs (16 * group sum as i16, twice) @276. The i16 list there reads s0 s0 s1 s1 ..,
/// so the 4 bytes at `A8K_PAIR2 + 8j` are (s_2j, s_2j+1): the two-group pair the AVX-512 Q2_K,
/// Q3_K and Q6_K kernels' min and offset terms take per `vpdpwssd`, once per super-block.
pub const A8K_BLOCK: usize = 4 + QK_K + 16 + 64;
/// Offset of the (s_0, s_1) pair inside the doubled group sums of an A8K block.
pub const A8K_PAIR2: usize = 276 + 2;
/// IQ4_XSx8 offsets: sub-block scales, quants (module doc).
const KX_SC: usize = 16;
const KX_QS: usize = 80;
/// Q2_Kx8 offsets: group scales and mins, quants (module doc).
const K2_SC: usize = 32;
const K2_Q: usize = 160;
/// Q3_Kx8 offsets: group scales, low bits, high bits (module doc).
const K3_SC: usize = 16;
const K3_Q: usize = 144;
const K3_H: usize = K3_Q + 16 * 32;
/// Q4_Kx8 offsets: sub-block scales, mins, quants (module doc).
const K4_SC: usize = 32;
const K4_MIN: usize = 96;
const K4_QS: usize = 160;
/// Q5_Kx8: the 5th bits, after a Q4_Kx8 block.
const K5_QH: usize = K4_QS + 1024;
/// Q6_Kx8 offsets: group scales, quants (module doc).
const K6_SC: usize = 16;
const K6_QS: usize = 144;
/// Weight bytes per work item during prompt processing: stays in L2 while all tokens pass.
const CHUNK_BYTES: usize = 32 * 1024;

/// The weight types this module repacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)] // ggml's type names
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

impl Kind {
    pub fn of(t: DType) -> Option<Kind> {
        match t {
            DType::Q4_0 => Some(Kind::Q4_0),
            DType::Q4_1 => Some(Kind::Q4_1),
            DType::Q5_0 => Some(Kind::Q5_0),
            DType::Q5_1 => Some(Kind::Q5_1),
            DType::Q8_0 => Some(Kind::Q8_0),
            DType::IQ4_NL => Some(Kind::IQ4_NL),
            DType::IQ4_XS => Some(Kind::IQ4_XS),
            DType::Q2_K => Some(Kind::Q2_K),
            DType::Q3_K => Some(Kind::Q3_K),
            DType::Q4_K => Some(Kind::Q4_K),
            DType::Q5_K => Some(Kind::Q5_K),
            DType::Q6_K => Some(Kind::Q6_K),
            _ => None,
        }
    }
    /// Elements per block.
    pub const fn qk(self) -> usize {
        match self {
            Kind::Q4_0 | Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 | Kind::Q8_0 | Kind::IQ4_NL => QK,
            Kind::IQ4_XS | Kind::Q2_K | Kind::Q3_K | Kind::Q4_K | Kind::Q5_K | Kind::Q6_K => QK_K,
        }
    }
    /// Bytes of one activation block.
    pub const fn act_bytes(self) -> usize {
        match self {
            Kind::Q4_0 | Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 | Kind::Q8_0 | Kind::IQ4_NL => {
                A8_BLOCK
            }
            Kind::IQ4_XS | Kind::Q2_K | Kind::Q3_K | Kind::Q4_K | Kind::Q5_K | Kind::Q6_K => {
                A8K_BLOCK
            }
        }
    }
    /// Nibble kinds: (has a min, has a 5th bit, byte offset of the nibbles, the constant
    /// subtracted from the unsigned quant).
    pub const fn nibble_geometry(self) -> (bool, bool, usize, i32) {
        match self {
            Kind::Q4_0 => (false, false, 16, 8),
            Kind::Q4_1 => (true, false, 32, 0),
            Kind::Q5_0 => (false, true, 16, 16),
            Kind::Q5_1 => (true, true, 32, 0),
            _ => (false, false, 0, 0),
        }
    }
    /// Bytes of one 8-row block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 | Kind::IQ4_NL => 16 + 128,
            Kind::IQ4_XS => KX_QS + 1024,
            Kind::Q4_1 => 32 + 128,
            Kind::Q5_0 => 16 + 128 + 32,
            Kind::Q5_1 => 32 + 128 + 32,
            Kind::Q8_0 => 16 + 256,
            Kind::Q2_K => K2_Q + 16 * 32,
            Kind::Q3_K => K3_H + 8 * 32,
            Kind::Q4_K => K4_QS + 1024,
            Kind::Q5_K => K5_QH + 256,
            Kind::Q6_K => K6_QS + 16 * 96,
        }
    }
    pub const fn plain_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => Q4_0_BYTES,
            Kind::IQ4_NL => IQ4_NL_BYTES,
            Kind::IQ4_XS => IQ4_XS_BYTES,
            Kind::Q4_1 => Q4_1_BYTES,
            Kind::Q5_0 => Q5_0_BYTES,
            Kind::Q5_1 => Q5_1_BYTES,
            Kind::Q8_0 => Q8_0_BYTES,
            Kind::Q2_K => Q2_K_BYTES,
            Kind::Q3_K => Q3_K_BYTES,
            Kind::Q4_K => Q4_K_BYTES,
            Kind::Q5_K => Q5_K_BYTES,
            Kind::Q6_K => Q6_K_BYTES,
        }
    }
}

/// A matrix in the interleaved layout (see the module doc).
pub struct Packed {
    pub kind: Kind,
    /// Rows (unpadded) and columns.
    pub n: usize,
    pub k: usize,
    pub buf: AlignedBuf,
}

impl Packed {
    pub fn groups(&self) -> usize {
        self.n.div_ceil(GROUP)
    }
    pub fn group_bytes(&self) -> usize {
        self.k / self.kind.qk() * self.kind.block_bytes()
    }
    fn group(&self, g: usize) -> &[u8] {
        let gb = self.group_bytes();
        &self.buf.as_slice()[g * gb..(g + 1) * gb]
    }

    /// Repacks `n` plain rows of `k` elements (`w`: the file's bytes).
    pub fn new(kind: Kind, n: usize, k: usize, w: &[u8]) -> Packed {
        let mut p = Packed::zeroed(kind, n, k, w);
        let gb = p.group_bytes();
        for (g, o) in p.buf.as_mut_slice().chunks_exact_mut(gb).enumerate() {
            repack_group(kind, n, k, w, g, o);
        }
        p
    }

    /// `new` on the backend's threads (loading a model repacks every matrix; the bytes are the
    /// same).
    pub fn new_on(b: &CpuBackend, kind: Kind, n: usize, k: usize, w: &[u8]) -> Packed {
        let mut p = Packed::zeroed(kind, n, k, w);
        let (gb, groups) = (p.group_bytes(), p.groups());
        const PER_ITEM: usize = 64;
        let out = SyncPtr(p.buf.as_mut_slice().as_mut_ptr());
        let job = |item: usize, _tid: usize| {
            for g in item * PER_ITEM..((item + 1) * PER_ITEM).min(groups) {
                // SAFETY: g < groups and the buffer holds groups * gb bytes (zeroed above);
                // group g's bytes are written by this item alone, and the pool joins before
                // `p` is used again.
                let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(g * gb), gb) };
                repack_group(kind, n, k, w, g, o);
            }
        };
        b.run_items(groups.div_ceil(PER_ITEM), w.len(), &job);
        p
    }

    /// The zeroed buffer of a repack of `w` (sizes checked).
    fn zeroed(kind: Kind, n: usize, k: usize, w: &[u8]) -> Packed {
        assert!(k % kind.qk() == 0, "repack: k={k} is not whole blocks");
        let nb = k / kind.qk();
        assert_eq!(
            w.len(),
            n * nb * kind.plain_bytes(),
            "repack: wrong byte count"
        );
        let buf = AlignedBuf::zeroed(n.div_ceil(GROUP) * nb * kind.block_bytes());
        Packed { kind, n, k, buf }
    }
}

impl Packed {
    /// Row `row`'s block `b` in the file's layout, written to `out` (`kind`'s plain block size):
    /// the inverse of the repack, byte for byte (tests: round trip on random blocks). Lets a tied
    /// embedding table be read from the head's packed copy, so the file's pages of it are never
    /// mapped again.
    pub fn plain_block(&self, row: usize, b: usize, out: &mut [u8]) {
        let nb = self.k / self.kind.qk();
        assert!(
            row < self.n && b < nb,
            "plain_block: row {row} block {b} out of range"
        );
        let out = &mut out[..self.kind.plain_bytes()];
        let r = row % GROUP;
        let o = &self.group(row / GROUP)[b * self.kind.block_bytes()..][..self.kind.block_bytes()];
        match self.kind {
            Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 => {
                let (min, hb, qo, _) = self.kind.nibble_geometry();
                out[0..2].copy_from_slice(&o[2 * r..2 * r + 2]);
                let mut p = 2;
                if min {
                    out[2..4].copy_from_slice(&o[16 + 2 * r..16 + 2 * r + 2]);
                    p = 4;
                }
                if hb {
                    let mut qh = 0u32;
                    for e in 0..4 {
                        let byte = o[qo + 128 + 4 * r + e];
                        for v in 0..8 {
                            qh |= u32::from((byte >> v) & 1) << (4 * v + e);
                        }
                    }
                    out[p..p + 4].copy_from_slice(&qh.to_le_bytes());
                    p += 4;
                }
                for j in 0..4 {
                    out[p + 4 * j..][..4].copy_from_slice(&o[qo + 32 * j + 4 * r..][..4]);
                }
            }
            Kind::Q4_0 | Kind::Q8_0 | Kind::IQ4_NL => {
                out[0..2].copy_from_slice(&o[2 * r..2 * r + 2]);
                for j in 0..(self.kind.block_bytes() - 16) / 32 {
                    out[2 + 4 * j..][..4].copy_from_slice(&o[16 + 32 * j + 4 * r..][..4]);
                }
            }
            Kind::IQ4_XS => {
                // File: d @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8.
                out.fill(0);
                out[0..2].copy_from_slice(&o[2 * r..2 * r + 2]);
                let mut sh = 0u16;
                for j in 0..8 {
                    let ls = (o[KX_SC + 8 * j + r] as i8 as i32 + 32) as u8;
                    out[4 + j / 2] |= (ls & 15) << (4 * (j % 2));
                    sh |= u16::from(ls >> 4) << (2 * j);
                    for c in 0..4 {
                        out[8 + 16 * j + 4 * c..][..4]
                            .copy_from_slice(&o[KX_QS + 128 * j + 32 * c + 4 * r..][..4]);
                    }
                }
                out[2..4].copy_from_slice(&sh.to_le_bytes());
            }
            Kind::Q4_K | Kind::Q5_K => {
                // Q5_K: d, dmin, scales, qh[32] @16, qs @48; Q4_K: qs @16.
                let qs = if self.kind == Kind::Q5_K { 48 } else { 16 };
                if self.kind == Kind::Q5_K {
                    for c in 0..8 {
                        out[16 + 4 * c..][..4].copy_from_slice(&o[K5_QH + 32 * c + 4 * r..][..4]);
                    }
                }
                out[0..2].copy_from_slice(&o[2 * r..2 * r + 2]);
                out[2..4].copy_from_slice(&o[16 + 2 * r..16 + 2 * r + 2]);
                let sc: [u8; 8] = std::array::from_fn(|j| o[K4_SC + 8 * j + r]);
                let mn: [u8; 8] = std::array::from_fn(|j| o[K4_MIN + 16 * (j / 2) + 2 * r + j % 2]);
                // ggml's 12-byte packing of eight 6-bit scales and mins (k4_scales_mins reversed).
                for j in 0..4 {
                    out[4 + j] = sc[j] | (sc[j + 4] >> 4) << 6;
                    out[8 + j] = mn[j] | (mn[j + 4] >> 4) << 6;
                    out[12 + j] = (sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4;
                }
                for p in 0..4 {
                    for c in 0..8 {
                        out[qs + 32 * p + 4 * c..][..4]
                            .copy_from_slice(&o[K4_QS + 256 * p + 32 * c + 4 * r..][..4]);
                    }
                }
            }
            Kind::Q2_K => {
                // File: scales[16] @0, qs[64] @16, d @80, dmin @82.
                out.fill(0);
                out[80..82].copy_from_slice(&o[2 * r..2 * r + 2]);
                out[82..84].copy_from_slice(&o[16 + 2 * r..16 + 2 * r + 2]);
                for g in 0..16 {
                    out[g] = o[K2_SC + 8 * g + r];
                }
                for e in 0..QK_K {
                    let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    out[16 + 32 * h + l] |= ((o[K2_Q + 32 * g + i] >> (2 * c)) & 3) << (2 * j);
                }
            }
            Kind::Q3_K => {
                // File: hmask[32] @0, qs[64] @32, 12 bytes of 6-bit scales @96, d @108.
                out.fill(0);
                out[108..110].copy_from_slice(&o[2 * r..2 * r + 2]);
                for j in 0..16 {
                    let sc = (o[K3_SC + 8 * j + r] as i8 as i32 + 32) as u8;
                    out[96 + j % 8] |= (sc & 15) << (4 * (j / 8));
                    out[104 + j % 4] |= (sc >> 4) << (2 * (j / 4));
                }
                for e in 0..QK_K {
                    let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                    let low = (o[K3_Q + 32 * g + i] >> (2 * c)) & 3;
                    let high = (o[K3_H + 32 * (g / 2) + i] >> (c + 4 * (g % 2))) & 1;
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    out[32 + 32 * h + l] |= low << (2 * j);
                    out[l] |= high << (4 * h + j);
                }
            }
            Kind::Q6_K => {
                out.fill(0);
                out[208..210].copy_from_slice(&o[2 * r..2 * r + 2]);
                for g in 0..16 {
                    out[192 + g] = o[K6_SC + 8 * g + r];
                }
                for e in 0..QK_K {
                    let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                    let low = (o[K6_QS + 96 * g + 32 * (c % 2) + i] >> (4 * (c / 2))) & 15;
                    let high = (o[K6_QS + 96 * g + 64 + i] >> (2 * c)) & 3;
                    let (h, q, l) = (e / 128, e % 128 / 32, e % 32);
                    out[64 * h + 32 * (q & 1) + l] |= low << if q < 2 { 0 } else { 4 };
                    out[128 + 32 * h + l] |= high << (2 * q);
                }
            }
        }
    }
}

/// Fills group `g` (`o`, zeroed) of the repack of `n` rows of `k` elements from the file's bytes.
fn repack_group(kind: Kind, n: usize, k: usize, w: &[u8], g: usize, o: &mut [u8]) {
    let nb = k / kind.qk();
    let (pb, bb) = (kind.plain_bytes(), kind.block_bytes());
    for b in 0..nb {
        let o = &mut o[b * bb..][..bb];
        for r in 0..GROUP.min(n - g * GROUP) {
            let src = &w[((g * GROUP + r) * nb + b) * pb..][..pb];
            repack_block(kind, src, r, o);
        }
    }
}

/// Writes row `r`'s plain block `src` into its slots of the 8-row block `o`.
fn repack_block(kind: Kind, src: &[u8], r: usize, o: &mut [u8]) {
    match kind {
        Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 => {
            let (min, hb, qo, _) = kind.nibble_geometry();
            o[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
            // Plain: d, [m], [qh u32], qs[16].
            let mut p = 2;
            if min {
                o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&src[2..4]);
                p = 4;
            }
            let qh = if hb {
                p += 4;
                u32::from_le_bytes(src[p - 4..p].try_into().unwrap())
            } else {
                0
            };
            for j in 0..4 {
                o[qo + 32 * j + 4 * r..][..4].copy_from_slice(&src[p + 4 * j..][..4]);
            }
            if hb {
                for e in 0..4 {
                    let mut byte = 0u8;
                    for v in 0..8 {
                        byte |= (((qh >> (4 * v + e)) & 1) as u8) << v;
                    }
                    o[qo + 128 + 4 * r + e] = byte;
                }
            }
        }
        Kind::IQ4_XS => {
            o[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
            let sh = u16::from_le_bytes([src[2], src[3]]);
            for j in 0..8 {
                let low = (src[4 + j / 2] >> (4 * (j % 2))) & 15;
                let high = ((sh >> (2 * j)) & 3) as u8;
                o[KX_SC + 8 * j + r] = ((low | high << 4) as i8 - 32) as u8;
                for c in 0..4 {
                    o[KX_QS + 128 * j + 32 * c + 4 * r..][..4]
                        .copy_from_slice(&src[8 + 16 * j + 4 * c..][..4]);
                }
            }
        }
        Kind::Q4_0 | Kind::Q8_0 | Kind::IQ4_NL => {
            o[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
            for j in 0..(kind.block_bytes() - 16) / 32 {
                o[16 + 32 * j + 4 * r..][..4].copy_from_slice(&src[2 + 4 * j..][..4]);
            }
        }
        Kind::Q4_K | Kind::Q5_K => {
            let qs = if kind == Kind::Q5_K { 48 } else { 16 };
            if kind == Kind::Q5_K {
                for c in 0..8 {
                    o[K5_QH + 32 * c + 4 * r..][..4].copy_from_slice(&src[16 + 4 * c..][..4]);
                }
            }
            o[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
            o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&src[2..4]);
            let (sc, mn) = crate::dot::scalar::k4_scales_mins(&src[4..16]);
            for j in 0..8 {
                o[K4_SC + 8 * j + r] = sc[j];
            }
            for p in 0..4 {
                o[K4_MIN + 16 * p + 2 * r] = mn[2 * p];
                o[K4_MIN + 16 * p + 2 * r + 1] = mn[2 * p + 1];
            }
            for p in 0..4 {
                for c in 0..8 {
                    o[K4_QS + 256 * p + 32 * c + 4 * r..][..4]
                        .copy_from_slice(&src[qs + 32 * p + 4 * c..][..4]);
                }
            }
        }
        Kind::Q2_K => {
            o[2 * r..2 * r + 2].copy_from_slice(&src[80..82]);
            o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&src[82..84]);
            for g in 0..16 {
                o[K2_SC + 8 * g + r] = src[g];
            }
            // As Q3_K's low bits: element 128h + 32j + l is bits 2j..2j+2 of qs[32h + l].
            for e in 0..QK_K {
                let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                o[K2_Q + 32 * g + i] |= ((src[16 + 32 * h + l] >> (2 * j)) & 3) << (2 * c);
            }
        }
        Kind::Q3_K => {
            o[2 * r..2 * r + 2].copy_from_slice(&src[108..110]);
            let sc = crate::dot::scalar::q3k_scales(&src[96..108]);
            for g in 0..16 {
                o[K3_SC + 8 * g + r] = sc[g] as u8;
            }
            // ggml's Q3_K order: half h, shift j, lane l -> element 128h + 32j + l.
            let (hmask, qs) = (&src[0..32], &src[32..96]);
            for e in 0..QK_K {
                let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                let low = (qs[32 * h + l] >> (2 * j)) & 3;
                let high = (hmask[l] >> (4 * h + j)) & 1;
                let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                o[K3_Q + 32 * g + i] |= low << (2 * c);
                o[K3_H + 32 * (g / 2) + i] |= high << (c + 4 * (g % 2));
            }
        }
        Kind::Q6_K => {
            o[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
            for g in 0..16 {
                o[K6_SC + 8 * g + r] = src[192 + g];
            }
            // ggml's Q6_K order: half h, quarter q, lane l -> element 128h + 32q + l.
            let (ql, qh) = (&src[0..128], &src[128..192]);
            for e in 0..QK_K {
                let (h, q, l) = (e / 128, e % 128 / 32, e % 32);
                let lb = ql[64 * h + 32 * (q & 1) + l];
                let low = if q < 2 { lb & 0xF } else { lb >> 4 };
                let v = low | ((qh[32 * h + l] >> (2 * q)) & 3) << 4;
                let (g, c, i) = (e / 16, e % 16 / 4, 4 * r + e % 4);
                o[K6_QS + 96 * g + 32 * (c % 2) + i] |= (v & 15) << (4 * (c / 2));
                o[K6_QS + 96 * g + 64 + i] |= (v >> 4) << (2 * c);
            }
        }
    }
}

/// The packed form of `w`, if `prepare` made one.
pub(crate) fn packed(w: &Tensor) -> Option<&Packed> {
    w.prepared.as_ref()?.downcast_ref::<Packed>()
}

/// `Backend::prepare` for quantized types: repack when the AVX2 kernels can use it.
pub(crate) fn prepare(b: &CpuBackend, mut w: Tensor) -> Tensor {
    let Some(kind) = Kind::of(w.dtype) else {
        return w;
    };
    // Every type here is repacked unless the backend says not to. The repacked kernels change
    // only the float summation order (tested bitwise against their scalar twin); on SmolLM2
    // Q4_1 that moves top-1 agreement with llama.cpp from 99%+ (the plain path, ggml's order) to
    // ~97% on a text full of near-ties, at the same perplexity (crates/cria/tests/smollm2.rs
    // measures both paths).
    if !b.repacks() {
        return w;
    }
    if !b.isa.has_avx2() || w.cols() % kind.qk() != 0 || w.rows() == 0 {
        return w;
    }
    let p = Packed::new_on(b, kind, w.rows(), w.cols(), w.bytes());
    w.prepared = Some(Arc::new(p));
    w
}

/// Quantizes one f32 row into A8 blocks (`out.len() == x.len() / 32 * A8_BLOCK`), through the
/// ISA's Q8_1 converter, so the quants and d are exactly the plain path's Q8_0/Q8_1 ones (the
/// two share quants and d) and s is Q8_1's.
pub fn quantize_a8(isa: Isa, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // One pass, no staging copy, F16C for the f16 rounding (tests: the same bytes as below).
        crate::dot::avx2::quantize_a8(x, out, A8_BLOCK);
        return;
    }
    quantize_a8_generic(isa, x, out)
}

/// `quantize_a8` through the ISA's Q8_1 converter and a copy: the definition the fused AVX2
/// version is tested against.
pub fn quantize_a8_generic(isa: Isa, x: &[f32], out: &mut [u8]) {
    let nb = x.len() / QK;
    assert!(
        x.len() % QK == 0 && out.len() == nb * A8_BLOCK,
        "quantize_a8: bad sizes"
    );
    let kern = crate::dot::kernel(isa, DType::Q4_1).expect("Q4_1 kernel");
    let mut tmp = [0u8; Q8_1_BYTES * 8];
    // Eight blocks at a time through the Q8_1 converter (blocks are independent).
    for (xs, os) in x.chunks(QK * 8).zip(out.chunks_mut(A8_BLOCK * 8)) {
        let m = xs.len() / QK;
        (kern.from_float)(xs, &mut tmp[..m * Q8_1_BYTES]);
        for i in 0..m {
            let src = &tmp[i * Q8_1_BYTES..][..Q8_1_BYTES];
            let o = &mut os[i * A8_BLOCK..][..A8_BLOCK];
            o[..QK].copy_from_slice(&src[4..]);
            let h = |j: usize| half::f16::from_le_bytes([src[j], src[j + 1]]).to_f32();
            let sum: i32 = src[4..].iter().map(|&q| q as i8 as i32).sum();
            o[QK..QK + 4].copy_from_slice(&h(0).to_le_bytes());
            o[QK + 4..QK + 8].copy_from_slice(&sum.to_le_bytes());
            o[QK + 8..].copy_from_slice(&h(2).to_le_bytes());
        }
    }
}

/// Quantizes one f32 row into A8K super-blocks (`out.len() == x.len() / 256 * A8K_BLOCK`),
/// through the ISA's Q8_K converter (the plain path's quants and d).
pub fn quantize_a8k(isa: Isa, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // Vectorised Q8_K rounding in one pass (tests: the same bytes as below).
        crate::dot::avx2::quantize_a8k(x, out, A8K_BLOCK);
        return;
    }
    quantize_a8k_generic(isa, x, out)
}

/// `quantize_a8k` through the ISA's Q8_K converter and a copy: the definition the AVX2 version
/// is tested against.
pub fn quantize_a8k_generic(isa: Isa, x: &[f32], out: &mut [u8]) {
    let nb = x.len() / QK_K;
    assert!(
        x.len() % QK_K == 0 && out.len() == nb * A8K_BLOCK,
        "quantize_a8k: bad sizes"
    );
    let kern = crate::dot::kernel(isa, DType::Q4_K).expect("Q4_K kernel");
    let mut tmp = [0u8; Q8_K_BYTES];
    for (xs, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(A8K_BLOCK)) {
        (kern.from_float)(xs, &mut tmp);
        o[..4 + QK_K].copy_from_slice(&tmp[..4 + QK_K]);
        let bs16 = |g: usize| i16::from_le_bytes([tmp[260 + 2 * g], tmp[261 + 2 * g]]);
        for j in 0..8 {
            // |sum of 32 quants| <= 32 * 128: fits i16.
            let s = bs16(2 * j) + bs16(2 * j + 1);
            o[260 + 2 * j..][..2].copy_from_slice(&s.to_le_bytes());
        }
        for g in 0..16 {
            // |16 * sum of 16 quants| <= 16 * 16 * 127 = 32512: fits i16.
            let v = (16 * bs16(g)).to_le_bytes();
            o[276 + 4 * g..][..4].copy_from_slice(&[v[0], v[1], v[0], v[1]]);
        }
    }
}

/// The kernel signature: `nb` blocks of one group (`w`) against `cols` A8 rows (`a`, `stride`
/// bytes apart); `out[c][r]` = row r . token c.
pub type Tile = fn(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
);

/// The scalar twin of the SIMD tile kernels: same layout, same per-lane operation order.
pub fn tile_scalar(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let (bb, abb) = (kind.block_bytes(), kind.act_bytes());
    let h = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let i16_at = |b: &[u8], o: usize| i16::from_le_bytes([b[o], b[o + 1]]) as i32;
    for c in 0..cols {
        let mut acc = [0f32; GROUP];
        for b in 0..nb {
            let blk = &w[b * bb..][..bb];
            let ab = &a[c * stride + b * abb..][..abb];
            for (r, acc) in acc.iter_mut().enumerate() {
                let dw = h(blk, 2 * r);
                match kind {
                    Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 => {
                        let (min, hb, qo, off) = kind.nibble_geometry();
                        let q = |i: usize| ab[i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[QK..QK + 4].try_into().unwrap());
                        let sa = i32::from_le_bytes(ab[QK + 4..QK + 8].try_into().unwrap());
                        let mut s = 0i32;
                        for v in 0..8 {
                            for e in 0..4 {
                                let byte = blk[qo + 32 * (v % 4) + 4 * r + e] as i32;
                                let mut u = if v < 4 { byte & 15 } else { byte >> 4 };
                                if hb {
                                    u |= ((blk[qo + 128 + 4 * r + e] as i32 >> v) & 1) << 4;
                                }
                                let idx = if v < 4 {
                                    4 * v + e
                                } else {
                                    16 + 4 * (v - 4) + e
                                };
                                s += u * q(idx);
                            }
                        }
                        s -= off * sa;
                        *acc = (dw * da).mul_add(s as f32, *acc);
                        if min {
                            let s1 = f32::from_le_bytes(ab[QK + 8..].try_into().unwrap());
                            *acc = h(blk, 16 + 2 * r).mul_add(s1, *acc);
                        }
                    }
                    Kind::Q4_0 | Kind::Q8_0 | Kind::IQ4_NL => {
                        let q = |i: usize| ab[i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[QK..QK + 4].try_into().unwrap());
                        let sa = i32::from_le_bytes(ab[QK + 4..QK + 8].try_into().unwrap());
                        let mut s = 0i32;
                        if kind == Kind::IQ4_NL {
                            let kv = |n: i32| KVALUES_IQ4NL[n as usize] as i32;
                            for j in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[16 + 32 * j + 4 * r + e] as i32;
                                    s += kv(byte & 15) * q(4 * j + e)
                                        + kv(byte >> 4) * q(16 + 4 * j + e);
                                }
                            }
                        } else if kind == Kind::Q4_0 {
                            for j in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[16 + 32 * j + 4 * r + e] as i32;
                                    s += (byte & 15) * q(4 * j + e)
                                        + (byte >> 4) * q(16 + 4 * j + e);
                                }
                            }
                            s -= 8 * sa;
                        } else {
                            for j in 0..8 {
                                for e in 0..4 {
                                    s += blk[16 + 32 * j + 4 * r + e] as i8 as i32 * q(4 * j + e);
                                }
                            }
                        }
                        *acc = (dw * da).mul_add(s as f32, *acc);
                    }
                    Kind::Q4_K | Kind::Q5_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for j in 0..8 {
                            let (p, shift) = (j / 2, 4 * (j % 2));
                            let mut d = 0;
                            for e in 0..32 {
                                let at = 32 * (e / 4) + 4 * r + e % 4;
                                let mut v = (blk[K4_QS + 256 * p + at] >> shift) & 15;
                                if kind == Kind::Q5_K {
                                    v |= (blk[K5_QH + at] >> j & 1) << 4;
                                }
                                d += v as i32 * q(32 * j + e);
                            }
                            isum += blk[K4_SC + 8 * j + r] as i32 * d;
                            msum += blk[K4_MIN + 16 * (j / 2) + 2 * r + j % 2] as i32
                                * i16_at(ab, 260 + 2 * j);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                        *acc = (-(h(blk, 16 + 2 * r) * da)).mul_add(msum as f32, *acc);
                    }
                    Kind::IQ4_XS => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let kv = |n: u8| KVALUES_IQ4NL[n as usize] as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for j in 0..8 {
                            let mut d = 0;
                            for c in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[KX_QS + 128 * j + 32 * c + 4 * r + e];
                                    d += kv(byte & 15) * q(32 * j + 4 * c + e)
                                        + kv(byte >> 4) * q(32 * j + 16 + 4 * c + e);
                                }
                            }
                            isum += blk[KX_SC + 8 * j + r] as i8 as i32 * d;
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                    Kind::Q2_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                d += (blk[K2_Q + 32 * g + i] >> (2 * c) & 3) as i32 * q(e);
                            }
                            let b = blk[K2_SC + 8 * g + r] as i32;
                            isum += (b & 15) * d;
                            // The stored pair is 16 * the group's sum.
                            msum += (b >> 4) * (i16_at(ab, 276 + 4 * g) / 16);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                        *acc = (-(h(blk, 16 + 2 * r) * da)).mul_add(msum as f32, *acc);
                    }
                    Kind::Q3_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                let lo = blk[K3_Q + 32 * g + i] >> (2 * c) & 3;
                                let hi = blk[K3_H + 32 * (g / 2) + i] >> (c + 4 * (g % 2)) & 1;
                                d += (lo | hi << 2) as i32 * q(e);
                            }
                            // (u - 4) . a = u . a - 4 * sum(a); the stored pair is 16 * sum.
                            let sc = blk[K3_SC + 8 * g + r] as i8 as i32;
                            isum += sc * d - sc * (i16_at(ab, 276 + 4 * g) / 4);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                    Kind::Q6_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                let lo =
                                    blk[K6_QS + 96 * g + 32 * (c % 2) + i] >> (4 * (c / 2)) & 15;
                                let hi = blk[K6_QS + 96 * g + 64 + i] >> (2 * c) & 3;
                                d += (lo | hi << 4) as i32 * q(e);
                            }
                            // (q - 32) . a = q . a - 32 * sum(a); the stored pair is 16 * sum.
                            let sc = blk[K6_SC + 8 * g + r] as i8 as i32;
                            isum += sc * d - sc * 2 * i16_at(ab, 276 + 4 * g);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                }
            }
        }
        out[c] = acc;
    }
}

fn tile_fn(isa: Isa) -> Tile {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::tile,
        // AVX-512 runs groups in pairs (`tile2_for`); a matrix's odd last group takes the
        // AVX2 kernel (the same bits).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx2::tile,
        _ => tile_scalar,
    }
}

/// The tile kernel `isa` uses (tests).
pub fn tile_for(isa: Isa) -> Option<Tile> {
    isa.available().then(|| tile_fn(isa))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Kind, GROUP, QK, TILE_T};
    use std::arch::x86_64::*;

    /// Checks the arguments once, then runs the kernel for `cols` tokens.
    pub fn tile(
        kind: Kind,
        nb: usize,
        w: &[u8],
        a: &[u8],
        stride: usize,
        cols: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        assert!(
            (1..=TILE_T).contains(&cols)
                && w.len() >= nb * kind.block_bytes()
                && stride >= nb * kind.act_bytes()
                && a.len() >= (cols - 1) * stride + nb * kind.act_bytes(),
            "gemm_q tile: bad arguments"
        );
        let (w, a) = (w.as_ptr(), a.as_ptr());
        // SAFETY: this function is only handed out for Isa::Avx2/Avx512, which exist only
        // after Isa::available() confirmed AVX2/FMA/F16C; the reads stay inside `w` (nb blocks) and
        // `a` (cols rows of nb A8 blocks), checked above.
        unsafe {
            match (kind, cols) {
                (Kind::Q4_0, 1) => q4_0::<1>(nb, w, a, stride, out),
                (Kind::Q4_0, 2) => q4_0::<2>(nb, w, a, stride, out),
                (Kind::Q4_0, 3) => q4_0::<3>(nb, w, a, stride, out),
                (Kind::Q4_0, _) => q4_0_x4(nb, w, a, stride, out),
                (Kind::Q4_1, 1) => nib::<true, false, 1>(nb, w, a, stride, out),
                (Kind::Q4_1, 2) => nib::<true, false, 2>(nb, w, a, stride, out),
                (Kind::Q4_1, 3) => nib::<true, false, 3>(nb, w, a, stride, out),
                (Kind::Q4_1, _) => nib::<true, false, 4>(nb, w, a, stride, out),
                (Kind::Q5_0, 1) => nib::<false, true, 1>(nb, w, a, stride, out),
                (Kind::Q5_0, 2) => nib::<false, true, 2>(nb, w, a, stride, out),
                (Kind::Q5_0, 3) => nib::<false, true, 3>(nb, w, a, stride, out),
                (Kind::Q5_0, _) => nib::<false, true, 4>(nb, w, a, stride, out),
                (Kind::Q5_1, 1) => nib::<true, true, 1>(nb, w, a, stride, out),
                (Kind::Q5_1, 2) => nib::<true, true, 2>(nb, w, a, stride, out),
                (Kind::Q5_1, 3) => nib::<true, true, 3>(nb, w, a, stride, out),
                (Kind::Q5_1, _) => nib::<true, true, 4>(nb, w, a, stride, out),
                (Kind::Q8_0, 1) => q8_0::<1>(nb, w, a, stride, out),
                (Kind::Q8_0, 2) => q8_0::<2>(nb, w, a, stride, out),
                (Kind::Q8_0, 3) => q8_0::<3>(nb, w, a, stride, out),
                (Kind::Q8_0, _) => q8_0_x4(nb, w, a, stride, out),
                (Kind::Q4_K, 1) => q4_k::<false, 1>(nb, w, a, stride, out),
                (Kind::Q4_K, 2) => q4_k::<false, 2>(nb, w, a, stride, out),
                (Kind::Q4_K, 3) => q4_k::<false, 3>(nb, w, a, stride, out),
                (Kind::Q4_K, _) => q4_k::<false, 4>(nb, w, a, stride, out),
                (Kind::Q5_K, 1) => q4_k::<true, 1>(nb, w, a, stride, out),
                (Kind::Q5_K, 2) => q4_k::<true, 2>(nb, w, a, stride, out),
                (Kind::Q5_K, 3) => q4_k::<true, 3>(nb, w, a, stride, out),
                (Kind::Q5_K, _) => q4_k::<true, 4>(nb, w, a, stride, out),
                (Kind::IQ4_NL, 1) => iq4_nl::<1>(nb, w, a, stride, out),
                (Kind::IQ4_NL, 2) => iq4_nl::<2>(nb, w, a, stride, out),
                (Kind::IQ4_NL, 3) => iq4_nl::<3>(nb, w, a, stride, out),
                (Kind::IQ4_NL, _) => iq4_nl::<4>(nb, w, a, stride, out),
                (Kind::IQ4_XS, 1) => iq4_xs::<1>(nb, w, a, stride, out),
                (Kind::IQ4_XS, 2) => iq4_xs::<2>(nb, w, a, stride, out),
                (Kind::IQ4_XS, 3) => iq4_xs::<3>(nb, w, a, stride, out),
                (Kind::IQ4_XS, _) => iq4_xs::<4>(nb, w, a, stride, out),
                (Kind::Q2_K, 1) => q2_k::<1>(nb, w, a, stride, out),
                (Kind::Q2_K, 2) => q2_k::<2>(nb, w, a, stride, out),
                (Kind::Q2_K, 3) => q2_k::<3>(nb, w, a, stride, out),
                (Kind::Q2_K, _) => q2_k::<4>(nb, w, a, stride, out),
                (Kind::Q3_K, 1) => q3_k::<1>(nb, w, a, stride, out),
                (Kind::Q3_K, 2) => q3_k::<2>(nb, w, a, stride, out),
                (Kind::Q3_K, 3) => q3_k::<3>(nb, w, a, stride, out),
                (Kind::Q3_K, _) => q3_k::<4>(nb, w, a, stride, out),
                (Kind::Q6_K, 1) => q6_k::<1>(nb, w, a, stride, out),
                (Kind::Q6_K, 2) => q6_k::<2>(nb, w, a, stride, out),
                (Kind::Q6_K, 3) => q6_k::<3>(nb, w, a, stride, out),
                (Kind::Q6_K, _) => q6_k::<4>(nb, w, a, stride, out),
            }
        }
    }

    /// How far ahead of the block being decoded the one-token kernels prefetch.
    pub(super) const PF_AHEAD: usize = 2048;

    /// One token (decoding): every weight byte comes from memory once, and a kernel's own loads
    /// keep too few cache misses in flight (the out-of-order window holds well under a
    /// kilobyte of a group's blocks), so the block `PF_AHEAD` bytes on is prefetched: matmul_speed
    /// --ab 65536 2048 1 Q4_0 went from 30-33 to 37-40 GFLOP/s (prefetching 1 or 4 KiB ahead
    /// did no better). The lines of consecutive blocks' prefetches join up, and past the
    /// group's end they are the next group's (prefetches never fault). Several tokens read
    /// their chunk from L2: no prefetch.
    #[inline(always)]
    pub(super) unsafe fn prefetch_ahead<const T: usize>(blk: *const u8, bytes: usize) {
        prefetch_part::<T>(blk, bytes, 0, 1);
    }

    /// `prefetch_ahead` for part `part` of `parts` of a block (its lines from `part * bytes /
    /// parts` to the next part's start): a K-quant block is 1-2 KiB per group, and its
    /// prefetches spread over its decode instead of coming in one burst (matmul_speed --one
    /// 262144 2048 1 on AVX-512: Q4_K 39.5-42 -> 43-46 GFLOP/s, Q6_K 28 -> 30-31.5, Q5_K 33 -> 36-37.6).
    #[inline(always)]
    pub(super) unsafe fn prefetch_part<const T: usize>(
        blk: *const u8,
        bytes: usize,
        part: usize,
        parts: usize,
    ) {
        if T == 1 {
            let lo = (part * bytes / parts) & !63;
            let hi = if part + 1 == parts {
                bytes
            } else {
                ((part + 1) * bytes / parts) & !63
            };
            let mut o = lo;
            while o < hi {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF_AHEAD + o) as *const i8);
                o += 64;
            }
        }
    }

    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }
    /// Four weight vectors (lane = row, 4 unsigned bytes each) against 16 activation bytes at
    /// `y`, vector c with bytes 4c..4c+4 broadcast to every lane: per lane, the i16 pair sums of
    /// the 16 products added together. Callers keep |sum| < 2^15 (the adds wrap).
    #[inline(always)]
    unsafe fn sum4(w: &[__m256i], y: *const u8) -> __m256i {
        let pr = |c: usize| _mm256_maddubs_epi16(w[c], bcast4(y.add(4 * c)));
        _mm256_add_epi16(
            _mm256_add_epi16(pr(0), pr(1)),
            _mm256_add_epi16(pr(2), pr(3)),
        )
    }
    #[inline(always)]
    pub(super) unsafe fn f32_at(p: *const u8) -> f32 {
        std::ptr::read_unaligned(p as *const f32)
    }
    #[inline(always)]
    pub(super) unsafe fn i32_at(p: *const u8) -> i32 {
        std::ptr::read_unaligned(p as *const i32)
    }

    /// One token of the Q4_0 x4 kernel: `$b` is the address of its A8 block, `$acc` its
    /// accumulator. The same operations as `q4_0` (integer sums are exact, so the i16 chain
    /// order does not matter; then madd, - 8 * sum, cvt, d_w * d_a, one FMA).
    macro_rules! q4_0_token {
        ($b:literal, $acc:literal) => {
            concat!(
                "vpbroadcastd ymm13, dword ptr [",
                $b,
                "]\n",
                "vpmaddubsw ymm13, ymm0, ymm13\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 4]\n",
                "vpmaddubsw ymm14, ymm1, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 8]\n",
                "vpmaddubsw ymm14, ymm2, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 12]\n",
                "vpmaddubsw ymm14, ymm3, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 16]\n",
                "vpmaddubsw ymm14, ymm4, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 20]\n",
                "vpmaddubsw ymm14, ymm5, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 24]\n",
                "vpmaddubsw ymm14, ymm6, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 28]\n",
                "vpmaddubsw ymm14, ymm7, ymm14\n",
                "vpaddw ymm13, ymm13, ymm14\n",
                "vpmaddwd ymm13, ymm13, ymmword ptr [{c} + 32]\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 36]\n",
                "vpslld ymm14, ymm14, 3\n",
                "vpsubd ymm13, ymm13, ymm14\n",
                "vcvtdq2ps ymm13, ymm13\n",
                "vbroadcastss ymm14, dword ptr [",
                $b,
                " + 32]\n",
                "vmulps ymm14, ymm14, ymm12\n",
                "vfmadd231ps ",
                $acc,
                ", ymm14, ymm13\n",
            )
        };
    }

    /// `q4_0::<4>` in assembly: with intrinsics the compiler spills an accumulator and d_w to
    /// the stack (8 weight vectors + 4 accumulators + temporaries exceed 16 registers), and the
    /// spilled accumulator's store/reload sat on the loop-carried chain. Here: ymm0-7 the
    /// decoded nibbles, ymm8-11 the accumulators, ymm12 d_w, ymm13-14 temporaries; the nibble
    /// mask and the i16 ones are memory operands. Bitwise equal to `q4_0::<4>` (same operations
    /// per lane; tests compare with the scalar twin).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_x4(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        if nb == 0 {
            *out = [[0.0; GROUP]; TILE_T];
            return;
        }
        #[repr(align(32))]
        struct Consts([u8; 64]);
        let mut c = Consts([0x0F; 64]);
        for i in 0..16 {
            c.0[32 + 2 * i] = 1;
            c.0[33 + 2 * i] = 0;
        }
        // SAFETY (caller's): nb >= 1 blocks of 144 bytes at w, 4 rows of nb A8 blocks at a
        // (stride apart), out holds 4 x 8 f32; the asm reads only those, writes only out, and
        // declares every register it touches.
        std::arch::asm!(
            "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9",
            "vxorps ymm10, ymm10, ymm10",
            "vxorps ymm11, ymm11, ymm11",
            "2:",
            "vcvtph2ps ymm12, xmmword ptr [{w}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 16]",
            "vpand ymm0, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm4, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 48]",
            "vpand ymm1, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm5, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 80]",
            "vpand ymm2, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm6, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 112]",
            "vpand ymm3, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm7, ymm14, ymmword ptr [{c}]",
            q4_0_token!("{a}", "ymm8"),
            q4_0_token!("{a} + {s}", "ymm9"),
            q4_0_token!("{a} + {s}*2", "ymm10"),
            q4_0_token!("{a} + {s3}", "ymm11"),
            "add {w}, 144",
            "add {a}, 44",
            "dec {n}",
            "jnz 2b",
            "vmovups ymmword ptr [{o}], ymm8",
            "vmovups ymmword ptr [{o} + 32], ymm9",
            "vmovups ymmword ptr [{o} + 64], ymm10",
            "vmovups ymmword ptr [{o} + 96], ymm11",
            w = inout(reg) w => _,
            a = inout(reg) a => _,
            n = inout(reg) nb => _,
            s = in(reg) stride,
            s3 = in(reg) 3 * stride,
            c = in(reg) c.0.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _,
            options(nostack),
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let m4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * (16 + 128));
            prefetch_ahead::<T>(blk, 16 + 128);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let p = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                lo[j] = _mm256_and_si256(p, m4);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
            }
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                // 8 u4 x i8 pair sums: |.| <= 8 * 2 * 15 * 127 = 30480, no i16 overflow. One
                // running sum (not a tree): fewer live registers, so the 4 accumulators and 8
                // weight vectors are not spilled; the tokens' chains overlap instead.
                let mut s = _mm256_maddubs_epi16(lo[0], bcast4(y));
                for c in 1..8 {
                    let (wv, off) = if c < 4 {
                        (lo[c], 4 * c)
                    } else {
                        (hi[c - 4], 16 + 4 * (c - 4))
                    };
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wv, bcast4(y.add(off))));
                }
                let i = _mm256_sub_epi32(
                    _mm256_madd_epi16(s, ones),
                    _mm256_set1_epi32(8 * i32_at(y.add(QK + 4))),
                );
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Q4_1, Q5_0, Q5_1 (MIN: a per-block min, HB: a 5th bit); see the layouts in the module doc.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nib<const MIN: bool, const HB: bool, const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let qo = if MIN { 32 } else { 16 };
        let bb = qo + 128 + if HB { 32 } else { 0 };
        // Q5_0's quants are u5 - 16; the min kinds add m instead of an offset.
        let off = if MIN { 0 } else { 16 };
        let m4 = _mm256_set1_epi8(0x0F);
        let m16 = _mm256_set1_epi8(0x10);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            prefetch_ahead::<T>(blk, bb);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let mut u = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let p = _mm256_loadu_si256(blk.add(qo + 32 * j) as *const __m256i);
                u[j] = _mm256_and_si256(p, m4);
                u[4 + j] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
            }
            if HB {
                // Bit v of each byte is the 5th bit of vector v's byte: move it to bit 4.
                let h = _mm256_loadu_si256(blk.add(qo + 128) as *const __m256i);
                u[0] = _mm256_or_si256(u[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), m16));
                u[1] = _mm256_or_si256(u[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), m16));
                u[2] = _mm256_or_si256(u[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), m16));
                u[3] = _mm256_or_si256(u[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), m16));
                u[4] = _mm256_or_si256(u[4], _mm256_and_si256(h, m16));
                u[5] = _mm256_or_si256(u[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), m16));
                u[6] = _mm256_or_si256(u[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), m16));
                u[7] = _mm256_or_si256(u[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), m16));
            }
            let mw = if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                // Vector v holds elements 4v.. (v < 4) or 16 + 4(v - 4)..: activation chunk v.
                let s0 = sum4(&u[..4], y);
                let s1 = sum4(&u[4..], y.add(16));
                // u5 x i8: 4 pair sums stay within i16 (4 * 2 * 31 * 127 = 31496); 8 would not.
                let i = if HB {
                    _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones))
                } else {
                    _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones)
                };
                let sa = i32_at(y.add(QK + 4));
                let i = _mm256_sub_epi32(i, _mm256_set1_epi32(off * sa));
                let da = f32_at(y.add(QK));
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
                if MIN {
                    acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f32_at(y.add(QK + 8))), acc[t]);
                }
            }
        }
        store(&acc, out);
    }

    /// One token of the Q8_0 x4 kernel (see `q8_0_x4`).
    macro_rules! q8_0_token {
        ($b:literal, $acc:literal) => {
            concat!(
                "vpbroadcastd ymm13, dword ptr [",
                $b,
                " + 0]\n",
                "vpsignb ymm13, ymm13, ymmword ptr [{w} + 16]\n",
                "vpmaddubsw ymm13, ymm0, ymm13\n",
                "vpmaddwd ymm13, ymm13, ymm15\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 4]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 48]\n",
                "vpmaddubsw ymm14, ymm1, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 8]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 80]\n",
                "vpmaddubsw ymm14, ymm2, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 12]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 112]\n",
                "vpmaddubsw ymm14, ymm3, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 16]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 144]\n",
                "vpmaddubsw ymm14, ymm4, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 20]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 176]\n",
                "vpmaddubsw ymm14, ymm5, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 24]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 208]\n",
                "vpmaddubsw ymm14, ymm6, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vpbroadcastd ymm14, dword ptr [",
                $b,
                " + 28]\n",
                "vpsignb ymm14, ymm14, ymmword ptr [{w} + 240]\n",
                "vpmaddubsw ymm14, ymm7, ymm14\n",
                "vpmaddwd ymm14, ymm14, ymm15\n",
                "vpaddd ymm13, ymm13, ymm14\n",
                "vcvtdq2ps ymm13, ymm13\n",
                "vbroadcastss ymm14, dword ptr [",
                $b,
                " + 32]\n",
                "vmulps ymm14, ymm14, ymm12\n",
                "vfmadd231ps ",
                $acc,
                ", ymm14, ymm13\n",
            )
        };
    }

    /// `q8_0::<4>` in assembly, for the reason `q4_0_x4` gives (the intrinsics version spilled
    /// several vectors per block): ymm0-7 |w|, ymm8-11 the accumulators, ymm12 d_w, ymm13-14
    /// temporaries, ymm15 the i16 ones; w itself (for the sign) is a memory operand. Per vector:
    /// maddubs(|w|, sign(a, w)) then madd with ones, summed in i32 (exact, so the order of the
    /// sums does not matter): bitwise equal to `q8_0::<4>`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_x4(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        if nb == 0 {
            *out = [[0.0; GROUP]; TILE_T];
            return;
        }
        #[repr(align(32))]
        struct Ones([u16; 16]);
        let c = Ones([1; 16]);
        // SAFETY (caller's): nb >= 1 blocks of 272 bytes at w, 4 rows of nb A8 blocks at a
        // (stride apart), out holds 4 x 8 f32; the asm reads only those, writes only out, and
        // declares every register it touches.
        std::arch::asm!(
            "vmovdqu ymm15, ymmword ptr [{c}]",
            "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9",
            "vxorps ymm10, ymm10, ymm10",
            "vxorps ymm11, ymm11, ymm11",
            "2:",
            "vcvtph2ps ymm12, xmmword ptr [{w}]",
            "vpabsb ymm0, ymmword ptr [{w} + 16]",
            "vpabsb ymm1, ymmword ptr [{w} + 48]",
            "vpabsb ymm2, ymmword ptr [{w} + 80]",
            "vpabsb ymm3, ymmword ptr [{w} + 112]",
            "vpabsb ymm4, ymmword ptr [{w} + 144]",
            "vpabsb ymm5, ymmword ptr [{w} + 176]",
            "vpabsb ymm6, ymmword ptr [{w} + 208]",
            "vpabsb ymm7, ymmword ptr [{w} + 240]",
            q8_0_token!("{a}", "ymm8"),
            q8_0_token!("{a} + {s}", "ymm9"),
            q8_0_token!("{a} + {s}*2", "ymm10"),
            q8_0_token!("{a} + {s3}", "ymm11"),
            "add {w}, 272",
            "add {a}, 44",
            "dec {n}",
            "jnz 2b",
            "vmovups ymmword ptr [{o}], ymm8",
            "vmovups ymmword ptr [{o} + 32], ymm9",
            "vmovups ymmword ptr [{o} + 64], ymm10",
            "vmovups ymmword ptr [{o} + 96], ymm11",
            w = inout(reg) w => _,
            a = inout(reg) a => _,
            n = inout(reg) nb => _,
            s = in(reg) stride,
            s3 = in(reg) 3 * stride,
            c = in(reg) c.0.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * (16 + 256));
            prefetch_ahead::<T>(blk, 16 + 256);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            // |w| stays in registers for all tokens; w itself (for the sign) is re-read from L1.
            let mut aw = [_mm256_setzero_si256(); 8];
            for j in 0..8 {
                aw[j] = _mm256_abs_epi8(_mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i));
            }
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                let mut s = [_mm256_setzero_si256(); 2];
                for j in 0..8 {
                    let wj = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                    // Pairs of |w| * a fit i16 (2 * 127 * 127), but two such sums may not.
                    let p = _mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(bcast4(y.add(4 * j)), wj));
                    s[j & 1] = _mm256_add_epi32(s[j & 1], _mm256_madd_epi16(p, ones));
                }
                let i = _mm256_add_epi32(s[0], s[1]);
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Writes the tile's accumulators out.
    #[inline(always)]
    unsafe fn store<const T: usize>(acc: &[__m256; T], out: &mut [[f32; GROUP]; TILE_T]) {
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
    /// A super-block's closing step: acc = fma(d_w * d_a, (f32) isum, acc) per token, d_w the
    /// 8 rows' f16 scales at `blk`, d_a the f32 at the head of the token's activation block.
    #[inline(always)]
    unsafe fn close_block<const T: usize>(
        acc: &mut [__m256; T],
        blk: *const u8,
        isum: &[__m256i; T],
        ya: impl Fn(usize) -> *const u8,
    ) {
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        for t in 0..T {
            let da = _mm256_set1_ps(f32_at(ya(t)));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }

    #[inline(always)]
    unsafe fn load16_u8_to_i16(p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i))
    }
    /// The 8 bytes at `p` (one per row) in every 128-bit lane, for a row-spreading shuffle.
    #[inline(always)]
    pub(super) unsafe fn bcast8(p: *const u8) -> __m256i {
        _mm256_set1_epi64x(std::ptr::read_unaligned(p as *const i64))
    }
    /// Shuffle control: lane r (of 8) gets byte r four times (`bcast8` puts all 8 bytes in
    /// both 128-bit halves, so the in-lane shuffle reaches rows 4..8 from the high half).
    pub(super) const SPREAD4: [i8; 32] = {
        let mut c = [0i8; 32];
        let mut i = 0;
        while i < 32 {
            c[i] = (i / 4) as i8;
            i += 1;
        }
        c
    };
    /// Lane r gets byte r of `p`'s 8 as the i16 pair (sc, sc), zero-extended.
    #[inline(always)]
    unsafe fn pairs_u8(p: *const u8) -> __m256i {
        _mm256_shuffle_epi8(
            bcast8(p),
            std::mem::transmute::<[i8; 32], __m256i>(SPREAD2_U),
        )
    }
    /// Shuffle control: lane r gets (byte r, 0, byte r, 0), the zero-extended i16 pair.
    pub(super) const SPREAD2_U: [i8; 32] = {
        let mut c = SPREAD4;
        let mut i = 1;
        while i < 32 {
            c[i] = -128; // index 0x80 writes zero
            i += 2;
        }
        c
    };
    /// Lane r gets byte r of `p`'s 8 as the i16 pair (sc, sc), sign-extended: each i16 is
    /// built as 257 * sc and shifted right arithmetically by 8.
    #[inline(always)]
    unsafe fn pairs_i8(p: *const u8) -> __m256i {
        let c = std::mem::transmute::<[i8; 32], __m256i>(SPREAD4);
        _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(bcast8(p), c))
    }

    /// Q5_K's 5th bit of sub-block j's element, at bit 4 of each byte: bit j of the qh byte
    /// (16-bit shifts: bit 4 of either byte comes from the same byte for every j).
    #[inline(always)]
    pub(super) unsafe fn k5_bit4(h: __m256i, j: usize) -> __m256i {
        let v = match j {
            0 => _mm256_slli_epi16::<4>(h),
            1 => _mm256_slli_epi16::<3>(h),
            2 => _mm256_slli_epi16::<2>(h),
            3 => _mm256_slli_epi16::<1>(h),
            4 => h,
            5 => _mm256_srli_epi16::<1>(h),
            6 => _mm256_srli_epi16::<2>(h),
            _ => _mm256_srli_epi16::<3>(h),
        };
        _mm256_and_si256(v, _mm256_set1_epi8(0x10))
    }

    /// Q4_K, and Q5_K (`HB`: the 5th bits at `K5_QH` ORed into the nibbles).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k<const HB: bool, const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let m4 = _mm256_set1_epi8(0x0F);
        let bb = if HB { Kind::Q5_K } else { Kind::Q4_K }.block_bytes();
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..8 {
                if j % 2 == 0 {
                    prefetch_part::<T>(blk, bb, j / 2, 4);
                }
                // Sub-block j: nibbles (low for even j, high for odd) of the 8 vectors of pair j/2.
                let q = blk.add(super::K4_QS + 256 * (j / 2));
                let mut wv = [_mm256_setzero_si256(); 8];
                for c in 0..8 {
                    let v = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                    wv[c] = if j % 2 == 0 {
                        _mm256_and_si256(v, m4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)
                    };
                    if HB {
                        let h =
                            _mm256_loadu_si256(blk.add(super::K5_QH + 32 * c) as *const __m256i);
                        wv[c] = _mm256_or_si256(wv[c], k5_bit4(h, j));
                    }
                }
                let scv = pairs_u8(blk.add(super::K4_SC + 8 * j));
                for t in 0..T {
                    let y = ya(t).add(4 + 32 * j);
                    let d = if HB {
                        // u5 x i8: 4 pair sums per half, 8 * 31 * 127 = 31496 < 2^15.
                        _mm256_add_epi32(
                            _mm256_madd_epi16(sum4(&wv[..4], y), scv),
                            _mm256_madd_epi16(sum4(&wv[4..], y.add(16)), scv),
                        )
                    } else {
                        // 8 u4 x i8 pair sums: |.| <= 8 * 2 * 15 * 127 = 30480, no i16 overflow.
                        let s = _mm256_add_epi16(sum4(&wv[..4], y), sum4(&wv[4..], y.add(16)));
                        _mm256_madd_epi16(s, scv)
                    };
                    isum[t] = _mm256_add_epi32(isum[t], d);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let dmw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for t in 0..T {
                let y = ya(t);
                let mut msum = _mm256_setzero_si256();
                for p in 0..4 {
                    let mv = load16_u8_to_i16(blk.add(super::K4_MIN + 16 * p));
                    msum =
                        _mm256_add_epi32(msum, _mm256_madd_epi16(mv, bcast4(y.add(260 + 4 * p))));
                }
                let da = _mm256_set1_ps(f32_at(y));
                acc[t] =
                    _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
                acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, da), _mm256_cvtepi32_ps(msum), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Q3_K decoded vector c of group g: its low 2 bits from `lq`, its 3rd bit (bit
    /// c + 4(g%2) of `hq`) to bit 2 (16-bit shifts: the kept bits come from the same byte).
    #[inline(always)]
    pub(super) unsafe fn k3_vec(lq: __m256i, hq: __m256i, g: usize, c: usize) -> __m256i {
        let low = match c {
            0 => lq,
            1 => _mm256_srli_epi16::<2>(lq),
            2 => _mm256_srli_epi16::<4>(lq),
            _ => _mm256_srli_epi16::<6>(lq),
        };
        let high = match c + 4 * (g % 2) {
            0 => _mm256_slli_epi16::<2>(hq),
            1 => _mm256_slli_epi16::<1>(hq),
            2 => hq,
            3 => _mm256_srli_epi16::<1>(hq),
            4 => _mm256_srli_epi16::<2>(hq),
            5 => _mm256_srli_epi16::<3>(hq),
            6 => _mm256_srli_epi16::<4>(hq),
            _ => _mm256_srli_epi16::<5>(hq),
        };
        _mm256_or_si256(
            _mm256_and_si256(low, _mm256_set1_epi8(3)),
            _mm256_and_si256(high, _mm256_set1_epi8(4)),
        )
    }

    /// The IQ4 levels, in both 128-bit lanes, for `pshufb`.
    #[inline(always)]
    unsafe fn iq4_lut() -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(
            super::KVALUES_IQ4NL.as_ptr() as *const __m128i
        ))
    }

    /// IQ4_NL: the nibbles looked up as signed levels, then Q8_0's sign trick (|w| * sign(a, w)
    /// pairs fit i16) against the token's A8 block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_nl<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let (ones, m4, lut) = (_mm256_set1_epi16(1), _mm256_set1_epi8(0x0F), iq4_lut());
        let bb = Kind::IQ4_NL.block_bytes();
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            prefetch_ahead::<T>(blk, bb);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            // Vector j < 4: elements 4j..4j+4 of each row (low nibbles); j >= 4: 16 + 4(j-4)...
            let mut wv = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let v = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                wv[j] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
                wv[4 + j] =
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
            }
            let aw = wv.map(|v| _mm256_abs_epi8(v));
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                let mut s = [_mm256_setzero_si256(); 2];
                for j in 0..8 {
                    let ya = y.add(if j < 4 { 4 * j } else { 16 + 4 * (j - 4) });
                    let p = _mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(bcast4(ya), wv[j]));
                    s[j & 1] = _mm256_add_epi32(s[j & 1], _mm256_madd_epi16(p, ones));
                }
                let i = _mm256_add_epi32(s[0], s[1]);
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// IQ4_XS: per 32-element sub-block the IQ4_NL sign-trick pair sums, each scaled by the
    /// sub-block's signed scale through `madd` with (sc, sc) pairs.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_xs<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let (m4, lut) = (_mm256_set1_epi8(0x0F), iq4_lut());
        let bb = Kind::IQ4_XS.block_bytes();
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..8 {
                if j % 2 == 0 {
                    prefetch_part::<T>(blk, bb, j / 2, 4);
                }
                let q = blk.add(super::KX_QS + 128 * j);
                let mut wv = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                    wv[c] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
                    wv[4 + c] =
                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
                }
                let aw = wv.map(|v| _mm256_abs_epi8(v));
                let scv = pairs_i8(blk.add(super::KX_SC + 8 * j));
                for t in 0..T {
                    let y = ya(t).add(4 + 32 * j);
                    let mut s = [_mm256_setzero_si256(); 2];
                    for c in 0..8 {
                        let yc = y.add(if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
                        let p = _mm256_maddubs_epi16(aw[c], _mm256_sign_epi8(bcast4(yc), wv[c]));
                        s[c & 1] = _mm256_add_epi32(s[c & 1], _mm256_madd_epi16(p, scv));
                    }
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(s[0], s[1]));
                }
            }
            close_block(&mut acc, blk, &isum, ya);
        }
        store(&acc, out);
    }

    /// Q2_K: per 16-element group, u2 x i8 sums times the group's 4-bit scale; the mins times
    /// (16 sum, 16 sum) pairs into their own sum, a multiple of 32 (exact when shifted back).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q2_k<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let bb = Kind::Q2_K.block_bytes();
        let (m3, m15) = (_mm256_set1_epi8(3), _mm256_set1_epi16(15));
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm256_setzero_si256(); T];
            let mut msum = [_mm256_setzero_si256(); T];
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(blk, bb, g / 4, 4);
                }
                let lq = _mm256_loadu_si256(blk.add(super::K2_Q + 32 * g) as *const __m256i);
                let wv = [
                    _mm256_and_si256(lq, m3),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(lq), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(lq), m3),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(lq), m3),
                ];
                let sm = pairs_u8(blk.add(super::K2_SC + 8 * g));
                let (scv, mv) = (_mm256_and_si256(sm, m15), _mm256_srli_epi16::<4>(sm));
                for t in 0..T {
                    let y = ya(t);
                    let s = sum4(&wv, y.add(4 + 16 * g));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s, scv));
                    let m = _mm256_madd_epi16(mv, bcast4(y.add(276 + 4 * g)));
                    msum[t] = _mm256_add_epi32(msum[t], m);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let dmw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for t in 0..T {
                let da = _mm256_set1_ps(f32_at(ya(t)));
                let m = _mm256_cvtepi32_ps(_mm256_srai_epi32::<5>(msum[t]));
                acc[t] =
                    _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
                acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, da), m, acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Q3_K: the Q6_K kernel's sums on u3 values, the offset 4 * sc * sum(a) being an eighth
    /// of the (16 sum, 16 sum) madd (exact: a multiple of 8).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q3_k<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let bb = Kind::Q3_K.block_bytes();
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * bb);
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm256_setzero_si256(); T];
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(blk, bb, g / 4, 4);
                }
                let lq = _mm256_loadu_si256(blk.add(super::K3_Q + 32 * g) as *const __m256i);
                let hq = _mm256_loadu_si256(blk.add(super::K3_H + 32 * (g / 2)) as *const __m256i);
                let wv: [__m256i; 4] = std::array::from_fn(|c| k3_vec(lq, hq, g, c));
                let scv = pairs_i8(blk.add(super::K3_SC + 8 * g));
                for t in 0..T {
                    let y = ya(t);
                    // u3 x i8: 16 products of at most 7 * 127 per lane, far inside i16.
                    let s = sum4(&wv, y.add(4 + 16 * g));
                    let off = _mm256_madd_epi16(scv, bcast4(y.add(276 + 4 * g)));
                    let d =
                        _mm256_sub_epi32(_mm256_madd_epi16(s, scv), _mm256_srai_epi32::<3>(off));
                    isum[t] = _mm256_add_epi32(isum[t], d);
                }
            }
            close_block(&mut acc, blk, &isum, ya);
        }
        store(&acc, out);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k<const T: usize>(
        nb: usize,
        w: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut [[f32; GROUP]; TILE_T],
    ) {
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = w.add(b * Kind::Q6_K.block_bytes());
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm256_setzero_si256(); T];
            let m4 = _mm256_set1_epi8(0x0F);
            let m30 = _mm256_set1_epi8(0x30);
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(blk, Kind::Q6_K.block_bytes(), g / 4, 4);
                }
                let q = blk.add(super::K6_QS + 96 * g);
                let l0 = _mm256_loadu_si256(q as *const __m256i);
                let l1 = _mm256_loadu_si256(q.add(32) as *const __m256i);
                let hb = _mm256_loadu_si256(q.add(64) as *const __m256i);
                // 16-bit shifts: the bits a byte gets from its neighbour are masked off.
                let wv = [
                    _mm256_or_si256(
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                        _mm256_and_si256(hb, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                    ),
                ];
                let scv = pairs_i8(blk.add(super::K6_SC + 8 * g));
                for t in 0..T {
                    let y = ya(t);
                    let yq = y.add(4 + 16 * g);
                    // u6 x i8 pairs: two sums of pairs stay within i16 (2 * 2 * 63 * 127 = 32004).
                    let s01 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(wv[0], bcast4(yq)),
                        _mm256_maddubs_epi16(wv[1], bcast4(yq.add(4))),
                    );
                    let s23 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(wv[2], bcast4(yq.add(8))),
                        _mm256_maddubs_epi16(wv[3], bcast4(yq.add(12))),
                    );
                    let d =
                        _mm256_add_epi32(_mm256_madd_epi16(s01, scv), _mm256_madd_epi16(s23, scv));
                    // The -32 offset: sc * 32 * sum(a) from the (16 sum, 16 sum) pair.
                    let off = _mm256_madd_epi16(scv, bcast4(y.add(276 + 4 * g)));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_sub_epi32(d, off));
                }
            }
            close_block(&mut acc, blk, &isum, ya);
        }
        store(&acc, out);
    }
}

/// The pair-of-groups kernel signature: as `Tile` on two groups (`w0`, `w1`, `nb` blocks each)
/// at once; `out[c][..8]` are group 0's rows, `out[c][8..]` group 1's.
pub type Tile2 = fn(
    kind: Kind,
    nb: usize,
    w0: &[u8],
    w1: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; 2 * GROUP]; TILE_T2],
);

/// The pair kernel of `isa`, if it has one (`isa` is the backend's, checked at construction).
fn tile2_fn(isa: Isa) -> Option<Tile2> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(vnni512::tile2),
        _ => None,
    }
}

/// The pair kernel `isa` has, if any and the CPU has `isa` (tests).
pub fn tile2_for(isa: Isa) -> Option<Tile2> {
    tile2_fn(isa).filter(|_| isa.available())
}

/// The AVX-512 kernels: two 8-row groups side by side on 512-bit registers. Each 256-bit
/// weight vector of group 0 and the same vector of group 1 fill the two halves of a zmm (one
/// insert per vector, shared by all the tile's tokens), the token's 4 activation bytes are
/// broadcast to all 16 lanes, and AVX512-VNNI's `vpdpbusd` (u8 x i8, 4 products summed into an
/// i32 lane) does what AVX2 needs `maddubs` + `madd` + adds for, on 16 rows at once. Lane r < 8
/// is group 0's row r, lane 8 + r group 1's. Integer dots are exact either way and the float
/// steps per block are the AVX2 kernels' (same order): the bits equal the scalar twin's. The
/// 32 registers hold `TILE_T2` = 8 tokens' accumulators beside the decoded block. The packed
/// layout is unchanged.
#[cfg(target_arch = "x86_64")]
mod vnni512 {
    use super::avx2::{f32_at, i32_at};
    use super::{Kind, GROUP, QK, TILE_T2};
    use std::arch::x86_64::*;

    type Out2 = [[f32; 2 * GROUP]; TILE_T2];

    /// As `avx2::tile` (same contract) on two groups.
    #[allow(clippy::too_many_arguments)]
    pub fn tile2(
        kind: Kind,
        nb: usize,
        w0: &[u8],
        w1: &[u8],
        a: &[u8],
        stride: usize,
        cols: usize,
        out: &mut Out2,
    ) {
        assert!(
            (1..=TILE_T2).contains(&cols)
                && w0.len() >= nb * kind.block_bytes()
                && w1.len() >= nb * kind.block_bytes()
                && stride >= nb * kind.act_bytes()
                && a.len() >= (cols - 1) * stride + nb * kind.act_bytes(),
            "gemm_q tile2: bad arguments"
        );
        let (w0, w1, a) = (w0.as_ptr(), w1.as_ptr(), a.as_ptr());
        macro_rules! by_cols {
            ($f:ident $(:: <$($g:literal),*>)?) => {
                match cols {
                    1 => $f::<$($($g,)*)? 1>(nb, w0, w1, a, stride, out),
                    2 => $f::<$($($g,)*)? 2>(nb, w0, w1, a, stride, out),
                    3 => $f::<$($($g,)*)? 3>(nb, w0, w1, a, stride, out),
                    4 => $f::<$($($g,)*)? 4>(nb, w0, w1, a, stride, out),
                    5 => $f::<$($($g,)*)? 5>(nb, w0, w1, a, stride, out),
                    6 => $f::<$($($g,)*)? 6>(nb, w0, w1, a, stride, out),
                    7 => $f::<$($($g,)*)? 7>(nb, w0, w1, a, stride, out),
                    _ => $f::<$($($g,)*)? 8>(nb, w0, w1, a, stride, out),
                }
            };
        }
        // SAFETY: handed out only for Isa::Avx512 on a CPU that has it (tile2_for); the reads
        // stay inside `w0`, `w1` (nb blocks each) and `a` (cols rows of nb activation blocks),
        // checked above.
        unsafe {
            match kind {
                Kind::Q4_0 => by_cols!(nib::<false, false>),
                Kind::Q4_1 => by_cols!(nib::<true, false>),
                Kind::Q5_0 => by_cols!(nib::<false, true>),
                Kind::Q5_1 => by_cols!(nib::<true, true>),
                Kind::Q8_0 => by_cols!(q8_0),
                Kind::Q4_K => by_cols!(q4_k::<false>),
                Kind::Q5_K => by_cols!(q4_k::<true>),
                Kind::IQ4_NL => by_cols!(iq4_nl),
                Kind::IQ4_XS => by_cols!(iq4_xs),
                Kind::Q2_K => by_cols!(q2_k),
                Kind::Q3_K => by_cols!(q3_k),
                Kind::Q6_K => by_cols!(q6_k),
            }
        }
    }

    /// `avx2::prefetch_ahead` for block b (of nb, `bytes` each) of both groups' streams. The
    /// groups are adjacent (w1 = w0 + nb * bytes) and the next pair follows them, so once w0's
    /// stream looks past its group's end (into w1's, already on its way) it looks at the group
    /// after the next instead, the next pair's second: both of the next pair's groups then
    /// start prefetched (w1's stream runs into the first).
    #[inline(always)]
    unsafe fn prefetch_ahead<const T: usize>(
        w0: *const u8,
        w1: *const u8,
        b: usize,
        nb: usize,
        bytes: usize,
    ) {
        prefetch_part::<T>(w0, w1, b, nb, bytes, 0, 1);
    }
    /// `avx2::prefetch_part` on both groups' streams (the jump as in `prefetch_ahead`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn prefetch_part<const T: usize>(
        w0: *const u8,
        w1: *const u8,
        b: usize,
        nb: usize,
        bytes: usize,
        part: usize,
        parts: usize,
    ) {
        let at = b * bytes;
        let jump = if at + super::avx2::PF_AHEAD >= nb * bytes {
            2 * nb * bytes
        } else {
            0
        };
        super::avx2::prefetch_part::<T>(w0.wrapping_add(at + jump), bytes, part, parts);
        super::avx2::prefetch_part::<T>(w1.wrapping_add(at), bytes, part, parts);
    }
    /// 32 bytes at p0 + o (low half) and at p1 + o (high half).
    #[inline(always)]
    unsafe fn ld2(p0: *const u8, p1: *const u8, o: usize) -> __m512i {
        let lo = _mm256_loadu_si256(p0.add(o) as *const __m256i);
        let hi = _mm256_loadu_si256(p1.add(o) as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
    /// 16 bytes at p0 + o (low half) and at p1 + o (high half).
    #[inline(always)]
    unsafe fn ld2_128(p0: *const u8, p1: *const u8, o: usize) -> __m256i {
        let lo = _mm_loadu_si128(p0.add(o) as *const __m128i);
        let hi = _mm_loadu_si128(p1.add(o) as *const __m128i);
        _mm256_set_m128i(hi, lo)
    }
    /// 8 bytes at p0 + o (low half) and at p1 + o (high half).
    #[inline(always)]
    unsafe fn ld2_64(p0: *const u8, p1: *const u8, o: usize) -> __m128i {
        let lo = std::ptr::read_unaligned(p0.add(o) as *const i64);
        let hi = std::ptr::read_unaligned(p1.add(o) as *const i64);
        _mm_set_epi64x(hi, lo)
    }
    /// Lane i of 16 gets the i16 pair (x_i, y_i), where x and y are the 8 bytes at p0 + o and
    /// p0 + o + 8 (lanes 0..8) or at p1 + o and p1 + o + 8 (8..16): a row's scales of two
    /// consecutive 16-element groups, for `offset_pairs`. Q2_K (`Q2`): the bytes are
    /// scale | min << 4 and the pair is the mins; else signed scales.
    #[inline(always)]
    unsafe fn zip_pairs<const Q2: bool>(p0: *const u8, p1: *const u8, o: usize) -> __m512i {
        const Z: [i8; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];
        let z = std::mem::transmute::<[[i8; 16]; 2], __m256i>([Z, Z]);
        let v = _mm256_shuffle_epi8(ld2_128(p0, p1, o), z);
        if Q2 {
            _mm512_srli_epi16::<4>(_mm512_cvtepu8_epi16(v))
        } else {
            _mm512_cvtepi8_epi16(v)
        }
    }
    /// Per token: sum over the 16 groups g of sc_g * 16 * (sum of group g's quants), the
    /// offset term of Q3_K and Q6_K, from the signed group scales (8 bytes per group, row r's
    /// at r) at `sc`: 8 `vpdpwssd` of (sc_2j, sc_2j+1) pairs by A8K's (s_2j, s_2j+1), once per
    /// super-block instead of one per group (every term is a multiple of 16).
    #[inline(always)]
    unsafe fn offset_pairs<const T: usize>(
        b0: *const u8,
        b1: *const u8,
        sc: usize,
        ya: impl Fn(usize) -> *const u8,
    ) -> [__m512i; T] {
        offset_pairs_by::<T, false>(b0, b1, sc, ya)
    }
    /// `offset_pairs`, or (`Q2`) the same sum of Q2_K's mins m_g.
    #[inline(always)]
    unsafe fn offset_pairs_by<const T: usize, const Q2: bool>(
        b0: *const u8,
        b1: *const u8,
        sc: usize,
        ya: impl Fn(usize) -> *const u8,
    ) -> [__m512i; T] {
        let mut o = [_mm512_setzero_si512(); T];
        for j in 0..8 {
            let p = zip_pairs::<Q2>(b0, b1, sc + 16 * j);
            for t in 0..T {
                o[t] = _mm512_dpwssd_epi32(o[t], p, bcast4(ya(t).add(super::A8K_PAIR2 + 8 * j)));
            }
        }
        o
    }
    /// 8 f16 at p0 + o and 8 at p1 + o, widened.
    #[inline(always)]
    unsafe fn ph2(p0: *const u8, p1: *const u8, o: usize) -> __m512 {
        _mm512_cvtph_ps(ld2_128(p0, p1, o))
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }
    /// Per lane: sum over c of (4 unsigned bytes of w[c]) . (the 4 activation bytes at
    /// y + off(c)); two chains of `vpdpbusd` added at the end.
    #[inline(always)]
    unsafe fn dot<const N: usize>(
        w: &[__m512i; N],
        y: *const u8,
        off: impl Fn(usize) -> usize,
    ) -> __m512i {
        let mut s = [_mm512_setzero_si512(); 2];
        for c in 0..N {
            s[c & 1] = _mm512_dpbusd_epi32(s[c & 1], w[c], bcast4(y.add(off(c))));
        }
        _mm512_add_epi32(s[0], s[1])
    }
    /// As `avx2::close_block` on two groups.
    #[inline(always)]
    unsafe fn close_block<const T: usize>(
        acc: &mut [__m512; T],
        b0: *const u8,
        b1: *const u8,
        isum: &[__m512i; T],
        ya: impl Fn(usize) -> *const u8,
    ) {
        let mut fsum = [_mm512_setzero_ps(); T];
        for t in 0..T {
            fsum[t] = _mm512_cvtepi32_ps(isum[t]);
        }
        close_block_f(acc, b0, b1, &fsum, ya);
    }
    /// `close_block` with the block's sum already in f32.
    #[inline(always)]
    unsafe fn close_block_f<const T: usize>(
        acc: &mut [__m512; T],
        b0: *const u8,
        b1: *const u8,
        fsum: &[__m512; T],
        ya: impl Fn(usize) -> *const u8,
    ) {
        let dw = ph2(b0, b1, 0);
        for t in 0..T {
            let da = _mm512_set1_ps(f32_at(ya(t)));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), fsum[t], acc[t]);
        }
    }
    #[inline(always)]
    unsafe fn store<const T: usize>(acc: &[__m512; T], out: &mut Out2) {
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Q4_0, Q4_1, Q5_0, Q5_1 (MIN: a per-block min, HB: a 5th bit); see the layouts in the
    /// module doc. Per block and token: i = sum(u * a) - off * sum(a), then the AVX2 kernels'
    /// float steps.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn nib<const MIN: bool, const HB: bool, const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let qo = if MIN { 32 } else { 16 };
        let bb = qo + 128 + if HB { 32 } else { 0 };
        let off = match (MIN, HB) {
            (true, _) => 0,
            (false, false) => 8,
            (false, true) => 16,
        };
        let m4 = _mm512_set1_epi8(0x0F);
        let m16 = _mm512_set1_epi8(0x10);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            prefetch_ahead::<T>(w0, w1, b, nb, bb);
            let dw = ph2(b0, b1, 0);
            let mut u = [_mm512_setzero_si512(); 8];
            for j in 0..4 {
                let p = ld2(b0, b1, qo + 32 * j);
                u[j] = _mm512_and_si512(p, m4);
                u[4 + j] = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
            }
            if HB {
                // u |= (shifted h) & 0x10 in one ternary-logic op (A | (B & C) = 0xF8).
                let h = ld2(b0, b1, qo + 128);
                let m = |u: __m512i, v: __m512i| _mm512_ternarylogic_epi32::<0xF8>(u, v, m16);
                u[0] = m(u[0], _mm512_slli_epi16::<4>(h));
                u[1] = m(u[1], _mm512_slli_epi16::<3>(h));
                u[2] = m(u[2], _mm512_slli_epi16::<2>(h));
                u[3] = m(u[3], _mm512_slli_epi16::<1>(h));
                u[4] = m(u[4], h);
                u[5] = m(u[5], _mm512_srli_epi16::<1>(h));
                u[6] = m(u[6], _mm512_srli_epi16::<2>(h));
                u[7] = m(u[7], _mm512_srli_epi16::<3>(h));
            }
            let mw = if MIN {
                ph2(b0, b1, 16)
            } else {
                _mm512_setzero_ps()
            };
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                let i = dot(&u, y, |c| if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
                let i = _mm512_sub_epi32(i, _mm512_set1_epi32(off * i32_at(y.add(QK + 4))));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
                if MIN {
                    acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32_at(y.add(QK + 8))), acc[t]);
                }
            }
        }
        store(&acc, out);
    }

    /// Q8_0: the signed weights biased by 128 into u8, so sum(w * a) = sum((w + 128) * a) -
    /// 128 * sum(a), with sum(a) stored in the A8 block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q8_0<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let bias = _mm512_set1_epi8(-128);
        let bb = 16 + 256;
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            prefetch_ahead::<T>(w0, w1, b, nb, bb);
            let dw = ph2(b0, b1, 0);
            let u: [__m512i; 8] =
                std::array::from_fn(|j| _mm512_xor_si512(ld2(b0, b1, 16 + 32 * j), bias));
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                let i = dot(&u, y, |c| 4 * c);
                let i = _mm512_sub_epi32(i, _mm512_set1_epi32(128 * i32_at(y.add(QK + 4))));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Q4_K: per sub-block an exact i32 dot (`vpdpbusd`), converted to f32 and accumulated times
    /// the row's sub-block scale by one FMA (`vcvtdq2ps` + `vfmadd`: 2 uops, one of which can
    /// issue on port 5, where `vpmulld` + `vpaddd` put 2 of their 3 on port 0 with the
    /// `vpdpbusd`s; each product is exact in f32, |dot * scale| < 2^22, so only the block's
    /// running sum can round, past 2^24); each 32-byte vector of a sub-block pair is loaded once
    /// for both sub-blocks (its low and high nibbles); the mins by `vpdpwssd`.
    /// Q5_K (`HB`): the 5th bits ORed in as each nibble vector is decoded (one `vpternlogd`).
    /// The FMA instead of `vpmulld`, matmul_speed t=128, 1 thread: Q4_K 8192x2048 292-296 ->
    /// 301-316 GFLOP/s, Q5_K 2048x2048 259-263 -> 278-286.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4_k<const HB: bool, const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let m4 = _mm512_set1_epi8(0x0F);
        let bb = if HB { Kind::Q5_K } else { Kind::Q4_K }.block_bytes();
        let m10 = _mm512_set1_epi8(0x10);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut fsum = [_mm512_setzero_ps(); T];
            for p in 0..4 {
                prefetch_part::<T>(w0, w1, b, nb, bb, p, 4);
                let q = super::K4_QS + 256 * p;
                let mut lo = [_mm512_setzero_si512(); 8];
                let mut hi = [_mm512_setzero_si512(); 8];
                for c in 0..8 {
                    let v = ld2(b0, b1, q + 32 * c);
                    lo[c] = _mm512_and_si512(v, m4);
                    hi[c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    if HB {
                        // Bits 2p (low nibbles) and 2p+1 (high) of the qh bytes, to bit 4.
                        let h = ld2(b0, b1, super::K5_QH + 32 * c);
                        let (hl, hh) = match p {
                            0 => (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<3>(h)),
                            1 => (_mm512_slli_epi16::<2>(h), _mm512_slli_epi16::<1>(h)),
                            2 => (h, _mm512_srli_epi16::<1>(h)),
                            _ => (_mm512_srli_epi16::<2>(h), _mm512_srli_epi16::<3>(h)),
                        };
                        lo[c] = _mm512_ternarylogic_epi32::<0xF8>(lo[c], hl, m10);
                        hi[c] = _mm512_ternarylogic_epi32::<0xF8>(hi[c], hh, m10);
                    }
                }
                let scale = |j: usize| {
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(ld2_64(b0, b1, super::K4_SC + 8 * j)))
                };
                let (sc0, sc1) = (scale(2 * p), scale(2 * p + 1));
                for t in 0..T {
                    let y = ya(t).add(4 + 64 * p);
                    let d0 = dot(&lo, y, |c| 4 * c);
                    let d1 = dot(&hi, y.add(32), |c| 4 * c);
                    fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), sc0, fsum[t]);
                    fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), sc1, fsum[t]);
                }
            }
            let dw = ph2(b0, b1, 0);
            let dmw = ph2(b0, b1, 16);
            for t in 0..T {
                let y = ya(t);
                let mut msum = _mm512_setzero_si512();
                for p in 0..4 {
                    let mv = _mm512_cvtepu8_epi16(ld2_128(b0, b1, super::K4_MIN + 16 * p));
                    msum = _mm512_dpwssd_epi32(msum, mv, bcast4(y.add(260 + 4 * p)));
                }
                let da = _mm512_set1_ps(f32_at(y));
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), fsum[t], acc[t]);
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, da), _mm512_cvtepi32_ps(msum), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// The IQ4 levels + 128 (as unsigned bytes), in every 128-bit lane, for `pshufb`.
    #[inline(always)]
    unsafe fn iq4_lut_biased() -> __m512i {
        let l = _mm_loadu_si128(super::KVALUES_IQ4NL.as_ptr() as *const __m128i);
        _mm512_broadcast_i32x4(_mm_xor_si128(l, _mm_set1_epi8(-128)))
    }

    /// IQ4_NL: the nibbles looked up as levels + 128, `vpdpbusd`, minus 128 * sum(a) (as Q8_0).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn iq4_nl<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let (m4, lut) = (_mm512_set1_epi8(0x0F), iq4_lut_biased());
        let bb = Kind::IQ4_NL.block_bytes();
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            prefetch_ahead::<T>(w0, w1, b, nb, bb);
            let dw = ph2(b0, b1, 0);
            let mut u = [_mm512_setzero_si512(); 8];
            for j in 0..4 {
                let v = ld2(b0, b1, 16 + 32 * j);
                u[j] = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                u[4 + j] =
                    _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
            }
            for t in 0..T {
                let y = a.add(t * stride + b * super::A8_BLOCK);
                let i = dot(&u, y, |c| if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
                let i = _mm512_sub_epi32(i, _mm512_set1_epi32(128 * i32_at(y.add(QK + 4))));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
            }
        }
        store(&acc, out);
    }

    /// IQ4_XS: per sub-block IQ4_NL's biased `vpdpbusd` dot, minus 128 * the sub-block's sum,
    /// times its signed scale (`vpmulld`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn iq4_xs<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let (m4, lut) = (_mm512_set1_epi8(0x0F), iq4_lut_biased());
        let bb = Kind::IQ4_XS.block_bytes();
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..8 {
                if j % 2 == 0 {
                    prefetch_part::<T>(w0, w1, b, nb, bb, j / 2, 4);
                }
                let q = super::KX_QS + 128 * j;
                let mut u = [_mm512_setzero_si512(); 8];
                for c in 0..4 {
                    let v = ld2(b0, b1, q + 32 * c);
                    u[c] = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                    u[4 + c] =
                        _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
                }
                let sc = _mm512_cvtepi8_epi32(ld2_64(b0, b1, super::KX_SC + 8 * j));
                for t in 0..T {
                    let y = ya(t);
                    let d = dot(&u, y.add(4 + 32 * j), |c| {
                        if c < 4 {
                            4 * c
                        } else {
                            16 + 4 * (c - 4)
                        }
                    });
                    let bsum = std::ptr::read_unaligned(y.add(260 + 2 * j) as *const i16) as i32;
                    let d = _mm512_sub_epi32(d, _mm512_set1_epi32(128 * bsum));
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(d, sc));
                }
            }
            close_block(&mut acc, b0, b1, &isum, ya);
        }
        store(&acc, out);
    }

    /// Q2_K: per 16-element group, the u2 x i8 dot by `vpdpbusd` (|.| <= 3 * 128 * 16 < 2^15,
    /// so `vpmaddwd` with (scale, 0) pairs scales it); the mins' sum(m_g * sum of group g) per
    /// super-block first (`offset_pairs` on the mins / 16: exact, its terms are multiples of 16).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q2_k<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let bb = Kind::Q2_K.block_bytes();
        let (m3, m15) = (_mm512_set1_epi8(3), _mm512_set1_epi32(15));
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let msum = offset_pairs_by::<T, true>(b0, b1, super::K2_SC, ya);
            let mut isum = [_mm512_setzero_si512(); T];
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
                }
                let lq = ld2(b0, b1, super::K2_Q + 32 * g);
                let wv = [
                    _mm512_and_si512(lq, m3),
                    _mm512_and_si512(_mm512_srli_epi16::<2>(lq), m3),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(lq), m3),
                    _mm512_and_si512(_mm512_srli_epi16::<6>(lq), m3),
                ];
                // (scale, 0) per lane, as Q3_K's.
                let sc = _mm512_and_si512(
                    _mm512_cvtepu8_epi32(ld2_64(b0, b1, super::K2_SC + 8 * g)),
                    m15,
                );
                for t in 0..T {
                    let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(d, sc));
                }
            }
            let dw = ph2(b0, b1, 0);
            let dmw = ph2(b0, b1, 16);
            for t in 0..T {
                let da = _mm512_set1_ps(f32_at(ya(t)));
                let m = _mm512_cvtepi32_ps(_mm512_srai_epi32::<4>(msum[t]));
                acc[t] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum[t]), acc[t]);
                acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, da), m, acc[t]);
            }
        }
        store(&acc, out);
    }

    /// Q3_K: per 16-element group, the u3 x i8 dot by `vpdpbusd` (|.| <= 7 * 128 * 16 < 2^15, so
    /// `vpmaddwd` with (sc, 0) pairs scales it); the -4 offset's 4 * sum(sc_g * sum of group g)
    /// per super-block first (`offset_pairs` / 4: exact, its terms are multiples of 16).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q3_k<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let bb = Kind::Q3_K.block_bytes();
        let (m3, m4) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
        let lo16 = _mm512_set1_epi32(0xFFFF);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let mut isum = offset_pairs::<T>(b0, b1, super::K3_SC, ya);
            for t in 0..T {
                isum[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_srai_epi32::<2>(isum[t]));
            }
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
                }
                let lq = ld2(b0, b1, super::K3_Q + 32 * g);
                let hq = ld2(b0, b1, super::K3_H + 32 * (g / 2));
                let wv: [__m512i; 4] = std::array::from_fn(|c| {
                    let low = match c {
                        0 => lq,
                        1 => _mm512_srli_epi16::<2>(lq),
                        2 => _mm512_srli_epi16::<4>(lq),
                        _ => _mm512_srli_epi16::<6>(lq),
                    };
                    let high = match c + 4 * (g % 2) {
                        0 => _mm512_slli_epi16::<2>(hq),
                        1 => _mm512_slli_epi16::<1>(hq),
                        2 => hq,
                        3 => _mm512_srli_epi16::<1>(hq),
                        4 => _mm512_srli_epi16::<2>(hq),
                        5 => _mm512_srli_epi16::<3>(hq),
                        6 => _mm512_srli_epi16::<4>(hq),
                        _ => _mm512_srli_epi16::<5>(hq),
                    };
                    _mm512_ternarylogic_epi32::<0xF8>(_mm512_and_si512(low, m3), high, m4)
                });
                // (sc, 0) per lane: the dot's low i16 times sc, its sign-extension half times 0.
                let sc = _mm512_and_si512(
                    _mm512_cvtepi8_epi32(ld2_64(b0, b1, super::K3_SC + 8 * g)),
                    lo16,
                );
                for t in 0..T {
                    let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(d, sc));
                }
            }
            close_block(&mut acc, b0, b1, &isum, ya);
        }
        store(&acc, out);
    }

    /// Q6_K: per 16-element group, the u6 x i8 dot by `vpdpbusd` (the products sum in i32, 4
    /// instructions per token instead of 4 `maddubs`, 2 adds and 2 `vpdpwssd`), times the
    /// group's scale by an f32 FMA as in `q4_k` (|dot * scale| < 2^24: exact); the -32 offset's
    /// 32 * sum(sc_g * sum of group g) per super-block first (2 * `offset_pairs`, in i32), the
    /// f32 sum's starting value.
    /// matmul_speed 2048x2048 t=64, 1 thread: 195-218 -> 226-229 GFLOP/s; the FMA instead of
    /// `vpmulld`, 2048x8192 t=128: 194-202 -> 216-221.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q6_k<const T: usize>(
        nb: usize,
        w0: *const u8,
        w1: *const u8,
        a: *const u8,
        stride: usize,
        out: &mut Out2,
    ) {
        let bb = Kind::Q6_K.block_bytes();
        let m4 = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
            let ya = |t: usize| a.add(t * stride + b * super::A8K_BLOCK);
            let off = offset_pairs::<T>(b0, b1, super::K6_SC, ya);
            let mut fsum = [_mm512_setzero_ps(); T];
            for t in 0..T {
                fsum[t] = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_slli_epi32::<1>(off[t]),
                ));
            }
            for g in 0..16 {
                if g % 4 == 0 {
                    prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
                }
                let q = super::K6_QS + 96 * g;
                let l0 = ld2(b0, b1, q);
                let l1 = ld2(b0, b1, q + 32);
                let hb = ld2(b0, b1, q + 64);
                let wv = [
                    _mm512_ternarylogic_epi32::<0xF8>(
                        _mm512_and_si512(l0, m4),
                        _mm512_slli_epi16::<4>(hb),
                        m30,
                    ),
                    _mm512_ternarylogic_epi32::<0xF8>(
                        _mm512_and_si512(l1, m4),
                        _mm512_slli_epi16::<2>(hb),
                        m30,
                    ),
                    _mm512_ternarylogic_epi32::<0xF8>(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l0), m4),
                        hb,
                        m30,
                    ),
                    _mm512_ternarylogic_epi32::<0xF8>(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l1), m4),
                        _mm512_srli_epi16::<2>(hb),
                        m30,
                    ),
                ];
                let sc =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld2_64(b0, b1, super::K6_SC + 8 * g)));
                for t in 0..T {
                    let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                    fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, fsum[t]);
                }
            }
            close_block_f(&mut acc, b0, b1, &fsum, ya);
        }
        store(&acc, out);
    }
}

/// Writes `res[c][..rows]` to `out[(i + c) * n + r0..]` for every token c of `res`.
///
/// # Safety
/// Those ranges must lie inside `out` and be written by no one else meanwhile.
#[inline(always)]
unsafe fn scatter_rows<const W: usize>(
    out: *mut f32,
    n: usize,
    i: usize,
    r0: usize,
    rows: usize,
    res: &[[f32; W]],
) {
    for (c, rc) in res.iter().enumerate() {
        std::ptr::copy_nonoverlapping(rc.as_ptr(), out.add((i + c) * n + r0), rows);
    }
}

/// Prefetches the cache lines of `out` that tokens `toks` of rows r0..r0+16 go to. A prompt's
/// output (t, n) is written 16 rows x 8 tokens at a time, each token's row n floats apart, and
/// with (t, n) beyond L2 every one of those stores missed, one by one: matmul_speed --one 8192
/// 2048 128 Q4_K (4 MiB of output) ran at 233 GFLOP/s, 309 with the stores left out, and 285
/// with the next tile's lines prefetched while the kernel runs.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn prefetch_out(out: *mut f32, n: usize, r0: usize, toks: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for tok in toks {
        let p = out.wrapping_add(tok * n + r0) as *const i8;
        // SAFETY: a prefetch is a hint: it reads nothing into the program and never faults,
        // whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(63),
            );
        }
    }
}

/// out (t, n) = x (t, k) . w^T for a packed `w`.
pub(crate) fn matmul(b: &CpuBackend, out: &mut [f32], x: &[f32], p: &Packed, t: usize) {
    matmul_many(b, x, t, &mut [out], &[p]);
}

/// At most this many matrices go through one `matmul_many`.
pub(crate) const MANY: usize = 4;

/// The packed forms of `ws` when `matmul_many` takes them together: all packed, at most `MANY`,
/// the same columns and the same activation blocks (one quantized copy of the input serves all).
/// Slots past `ws.len()` repeat the first matrix (only `[..ws.len()]` is meant).
pub(crate) fn packed_many<'a>(ws: &[&'a Tensor]) -> Option<[&'a Packed; MANY]> {
    let first = packed(ws.first()?)?;
    if ws.len() > MANY {
        return None;
    }
    let mut ps = [first; MANY];
    for (slot, w) in ps.iter_mut().zip(ws) {
        *slot = packed(w)?;
    }
    ps.iter()
        .all(|p| p.k == first.k && p.kind.act_bytes() == first.kind.act_bytes())
        .then_some(ps)
}

/// outs[m] (t, ps[m].n) = x (t, k) . ps[m]^T for matrices on the same input (Q, K, V; gate, up):
/// the input is quantized once, and all their work items go to the pool in one dispatch (one
/// wake-up and one join instead of one per matrix; decoding, the small K and V no longer leave a
/// thread idle). Each output is computed exactly as by a lone `matmul`.
pub(crate) fn matmul_many(
    b: &CpuBackend,
    x: &[f32],
    t: usize,
    outs: &mut [&mut [f32]],
    ps: &[&Packed],
) {
    assert!(
        !ps.is_empty()
            && ps.len() <= MANY
            && outs.len() == ps.len()
            && ps
                .iter()
                .all(|p| p.k == ps[0].k && p.kind.act_bytes() == ps[0].kind.act_bytes()),
        "gemm_q matmul_many: matrices do not share an input"
    );
    let (kind, k) = (ps[0].kind, ps[0].k);
    let nb = k / kind.qk();
    let ab = nb * kind.act_bytes();
    let mut act = b.act.lock().unwrap_or_else(|e| e.into_inner());
    if act.len() < t * ab {
        act.resize(t * ab, 0);
    }
    let quantize = |xr: &[f32], ar: &mut [u8]| match kind {
        Kind::Q4_0 | Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 | Kind::Q8_0 | Kind::IQ4_NL => {
            quantize_a8(b.isa, xr, ar)
        }
        Kind::IQ4_XS | Kind::Q2_K | Kind::Q3_K | Kind::Q4_K | Kind::Q5_K | Kind::Q6_K => {
            quantize_a8k(b.isa, xr, ar)
        }
    };
    b.convert_rows(x, t, k, &mut act[..t * ab], ab, &quantize);
    let a = &act[..t * ab];
    let tile = tile_fn(b.isa);
    let tile2 = tile2_fn(b.isa);
    // Per matrix: groups per work item, and the first global item number. Groups per item: an
    // even number (16 rows: with a 64-byte aligned `out`, no cache line of a token's output is
    // written by two items). One token: a few large contiguous ranges per thread, each streamed
    // from memory once. Several: about CHUNK_BYTES of weights, which stay in L2 while every
    // token passes over them.
    let (mut per_item, mut first) = ([0usize; MANY], [0usize; MANY + 1]);
    let total_groups: usize = ps.iter().map(|p| p.groups()).sum();
    for (m, p) in ps.iter().enumerate() {
        let groups = p.groups();
        let pi = if t == 1 {
            // The thread share of all matrices' groups, cut into 4 items per thread.
            groups.min(total_groups.div_ceil(b.threads * 4))
        } else {
            CHUNK_BYTES / p.group_bytes().max(1)
        };
        per_item[m] = (pi.max(2).div_ceil(2) * 2).min(groups).max(1);
        first[m + 1] = first[m] + groups.div_ceil(per_item[m]);
    }
    let n_items = first[ps.len()];
    let outp: [SyncPtr; MANY] = std::array::from_fn(|m| {
        SyncPtr(
            outs.get_mut(m)
                .map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
        )
    });
    for (o, p) in outs.iter().zip(ps) {
        assert_eq!(o.len(), t * p.n, "gemm_q matmul: out has the wrong size");
    }
    let job = |item: usize, _tid: usize| {
        let m = (0..ps.len()).rfind(|&m| first[m] <= item).unwrap_or(0);
        let (p, outp) = (ps[m], outp[m]);
        let (n, groups) = (p.n, p.groups());
        let item = item - first[m];
        let (g0, g1) = (item * per_item[m], ((item + 1) * per_item[m]).min(groups));
        let mut res = [[0f32; GROUP]; TILE_T];
        let mut res2 = [[0f32; 2 * GROUP]; TILE_T2];
        // Tokens per pass: a pair kernel takes more.
        let step = if tile2.is_some() { TILE_T2 } else { TILE_T };
        let mut i = 0;
        while i < t {
            let cols = step.min(t - i);
            let mut g = g0;
            while g < g1 {
                let r0 = g * GROUP;
                // SAFETY (both scatter_rows below): tokens i.. < t and rows r0..r0+rows <= n
                // lie inside this matrix's `out` (t * n, checked above); these (token, row)
                // pairs belong to this item alone, and the pool joins before `outs`' borrows end.
                match tile2 {
                    // Two groups at once where the ISA has a pair kernel.
                    Some(tile2) if g + 1 < g1 => {
                        let (w0, w1) = (p.group(g), p.group(g + 1));
                        prefetch_out(outp.get(), n, r0, i + cols..(i + 2 * cols).min(t));
                        tile2(p.kind, nb, w0, w1, &a[i * ab..], ab, cols, &mut res2);
                        let rows = (2 * GROUP).min(n - r0);
                        unsafe { scatter_rows(outp.get(), n, i, r0, rows, &res2[..cols]) };
                        g += 2;
                    }
                    // Else one group, TILE_T tokens per call.
                    _ => {
                        for c0 in (0..cols).step_by(TILE_T) {
                            let cc = TILE_T.min(cols - c0);
                            prefetch_out(outp.get(), n, r0, i + c0 + cc..(i + c0 + 2 * cc).min(t));
                            tile(
                                p.kind,
                                nb,
                                p.group(g),
                                &a[(i + c0) * ab..],
                                ab,
                                cc,
                                &mut res,
                            );
                            let rows = GROUP.min(n - r0);
                            unsafe { scatter_rows(outp.get(), n, i + c0, r0, rows, &res[..cc]) };
                        }
                        g += 1;
                    }
                }
            }
            i += cols;
        }
    };
    let macs: usize = ps.iter().map(|p| p.n * k * t).sum();
    b.run_items(n_items, macs, &job);
}
