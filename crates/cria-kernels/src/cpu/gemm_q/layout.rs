//! The repacked layout of `gemm_q` (its module doc describes every block): the kind of a
//! matrix, the byte offsets inside a block, and the repack from the file's plain blocks.

use super::act::{A8K_BLOCK, A8_BLOCK};
use crate::cpu::{CpuBackend, SyncPtr};
use crate::dot::layout::{
    IQ4_NL_BYTES, IQ4_XS_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, QK, QK_K,
};
use cria_core::tensor::AlignedBuf;
use cria_core::DType;

/// Rows per interleaved group (one per 32-bit lane of a 256-bit register).
pub const GROUP: usize = 8;

/// IQ4_XSx8 offsets: sub-block scales, quants (module doc).
pub(crate) const KX_SC: usize = 16;
pub(crate) const KX_QS: usize = 80;
/// Q2_Kx8 offsets: group scales and mins, quants (module doc).
pub(crate) const K2_SC: usize = 32;
pub(crate) const K2_Q: usize = 160;
/// Q3_Kx8 offsets: group scales, low bits, high bits (module doc).
pub(crate) const K3_SC: usize = 16;
pub(crate) const K3_Q: usize = 144;
pub(crate) const K3_H: usize = K3_Q + 16 * 32;
/// Q4_Kx8 offsets: sub-block scales, mins, quants (module doc).
pub(crate) const K4_SC: usize = 32;
pub(crate) const K4_MIN: usize = 96;
pub(crate) const K4_QS: usize = 160;
/// Q5_Kx8: the 5th bits, after a Q4_Kx8 block.
pub(crate) const K5_QH: usize = K4_QS + 1024;
/// Q6_Kx8 offsets: group scales, quants (module doc).
pub(crate) const K6_SC: usize = 16;
pub(crate) const K6_QS: usize = 144;

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
    pub(crate) fn group(&self, g: usize) -> &[u8] {
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
            let (sc, mn) = crate::arch::scalar::dot::k4_scales_mins(&src[4..16]);
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
            let sc = crate::arch::scalar::dot::q3k_scales(&src[96..108]);
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
