//! The LLaMA forward pass: one function over preallocated buffers and a preallocated KV cache.

use crate::model::Model;
use bytemuck::Zeroable;
use cria_core::quant::{self, BlockQ4_0, BlockQ8_0, QK};
use cria_core::{Error, Result};
use cria_kernels::{AttnShape, Backend, KvSlice, KvType};

/// One layer's K or V rows, (max_seq, kv_dim), in the cache's element type.
pub enum KvRows {
    /// IEEE half bits, rounded to nearest even from the f32 projections (ggml's cpy).
    F16(Vec<u16>),
    F32(Vec<f32>),
    /// ggml Q8_0 blocks of 32 values along a row (kv_dim / 32 per position).
    Q8_0(Vec<BlockQ8_0>),
    /// ggml Q4_0 blocks, as Q8_0.
    Q4_0(Vec<BlockQ4_0>),
}

impl KvRows {
    /// Rows for `n` values (a multiple of the type's block length).
    fn new(ty: KvType, n: usize) -> Self {
        let blocks = n / ty.block_len();
        match ty {
            KvType::F16 => KvRows::F16(vec![0; n]),
            KvType::F32 => KvRows::F32(vec![0.0; n]),
            KvType::Q8_0 => KvRows::Q8_0(vec![BlockQ8_0::zeroed(); blocks]),
            KvType::Q4_0 => KvRows::Q4_0(vec![BlockQ4_0::zeroed(); blocks]),
        }
    }
    /// Values 0..n as attention reads them (n a multiple of the type's block length).
    pub fn slice(&self, n: usize) -> KvSlice<'_> {
        match self {
            KvRows::F16(x) => KvSlice::F16(&x[..n]),
            KvRows::F32(x) => KvSlice::F32(&x[..n]),
            KvRows::Q8_0(x) => KvSlice::Q8_0(&x[..n / QK]),
            KvRows::Q4_0(x) => KvSlice::Q4_0(&x[..n / QK]),
        }
    }
    /// Stores `src` at value offset `at` (both whole blocks for a quantized type).
    fn store(&mut self, at: usize, src: &[f32]) {
        match self {
            KvRows::F16(x) => {
                // F16C's round-to-nearest-even when the CPU has it (half checks at run time):
                // the same bits as f16::from_f32 per element.
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let d: &mut [half::f16] = x[at..at + src.len()].reinterpret_cast_mut();
                d.convert_from_f32_slice(src)
            }
            KvRows::F32(x) => x[at..at + src.len()].copy_from_slice(src),
            // What llama.cpp's copy into a quantized cache does on x86 (the type's from_float).
            KvRows::Q8_0(x) => {
                quant::quantize_row_q8_0_x86(src, &mut x[at / QK..(at + src.len()) / QK])
            }
            KvRows::Q4_0(x) => {
                quant::quantize_row_q4_0(src, &mut x[at / QK..(at + src.len()) / QK])
            }
        }
    }
    /// Values held.
    fn len(&self) -> usize {
        match self {
            KvRows::F16(x) => x.len(),
            KvRows::F32(x) => x.len(),
            KvRows::Q8_0(x) => x.len() * QK,
            KvRows::Q4_0(x) => x.len() * QK,
        }
    }
    /// Copies values 0..n of `src` (n a multiple of the block length), if it is of this type.
    fn copy_prefix(&mut self, src: &KvRows, n: usize) {
        match (self, src) {
            (KvRows::F16(d), KvRows::F16(s)) => d[..n].copy_from_slice(&s[..n]),
            (KvRows::F32(d), KvRows::F32(s)) => d[..n].copy_from_slice(&s[..n]),
            (KvRows::Q8_0(d), KvRows::Q8_0(s)) => d[..n / QK].copy_from_slice(&s[..n / QK]),
            (KvRows::Q4_0(d), KvRows::Q4_0(s)) => d[..n / QK].copy_from_slice(&s[..n / QK]),
            _ => {}
        }
    }
}

/// K and V for every layer and position, allocated once for `max_seq` positions.
pub struct KvCache {
    pub k: Vec<KvRows>, // per layer (max_seq, kv_dim)
    pub v: Vec<KvRows>, // per layer (max_seq, kv_dim)
    pub max_seq: usize,
}

impl KvCache {
    /// An F16 cache (llama.cpp's default).
    pub fn new(m: &Model, max_seq: usize) -> Self {
        Self::with_type(m, max_seq, KvType::default())
    }

    /// A cache of `kv_type`. Panics if the model's heads are not whole blocks of a quantized
    /// type: check `KvType::check_head_dim` first (`try_with_type` does).
    pub fn with_type(m: &Model, max_seq: usize, kv_type: KvType) -> Self {
        Self::try_with_type(m, max_seq, kv_type).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A cache of `kv_type`, or the reason this model cannot have one.
    pub fn try_with_type(m: &Model, max_seq: usize, kv_type: KvType) -> Result<Self> {
        kv_type
            .check_head_dim(m.config.head_dim)
            .map_err(Error::msg)?;
        let n = max_seq * m.config.kv_dim();
        let nl = m.config.n_layers;
        Ok(KvCache {
            k: (0..nl).map(|_| KvRows::new(kv_type, n)).collect(),
            v: (0..nl).map(|_| KvRows::new(kv_type, n)).collect(),
            max_seq,
        })
    }

    /// The element type (every layer's rows have the same; F16 for a model without layers).
    pub fn kv_type(&self) -> KvType {
        self.k.first().map_or(KvType::F16, |k| k.slice(0).kv_type())
    }

    /// Bytes of K and V that attention reads per cached position, over all layers.
    pub fn bytes_per_position(&self) -> usize {
        let per_layer = self.k.first().map_or(0, |k| k.len() / self.max_seq.max(1));
        2 * self.k.len() * self.kv_type().row_bytes(per_layer)
    }

    /// Copies positions 0..n of every layer from `src`, a cache of the same model and type (a
    /// server slot reusing another's prompt prefix). Nothing is copied between different types.
    pub fn copy_prefix_from(&mut self, src: &KvCache, n: usize) {
        let per_pos = src.k.first().map_or(0, |k| k.len() / src.max_seq.max(1));
        for (d, s) in self
            .k
            .iter_mut()
            .chain(self.v.iter_mut())
            .zip(src.k.iter().chain(&src.v))
        {
            d.copy_prefix(s, n * per_pos);
        }
    }
}

/// Which logits a forward call produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only for the last token: `logits()` is (vocab).
    Last,
    /// For every token of the call: `logits()` is (t, vocab).
    All,
    /// No logits: the final-normed hidden state of every token, `hidden()` (t, dim), for
    /// embeddings.
    Hidden,
}

/// One sequence's part of a batched forward: its new tokens, the position of the first, and its
/// own KV cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub pos: usize,
    pub kv: &'a mut KvCache,
}

/// Called after each op with (name as llama.cpp's graph names it, layer, values): debug dumps of
/// intermediates without touching the forward (compare with llama.cpp's `llama-eval-callback`).
pub type Probe = Box<dyn FnMut(&str, usize, &[f32]) + Send>;

/// Tokens per micro-batch of a long prompt (`Scratch::new` with `Logits::Last`): the activation
/// buffers are sized for this many rows, not for the whole call (a 512-token call of a
/// LLaMA-3.2-1B shape: 10.5 MB instead of 42 MB; SmolLM2-135M: 2.2 MB instead of 8.7 MB).
/// Measured at no cost in prompt speed: a weight block is still decoded once per 4 tokens and
/// read from memory once per 128, and the smaller buffers stay in cache.
pub const UBATCH: usize = 128;

/// Activations for up to `max_t` tokens per call. Sized once; the forward never allocates.
pub struct Scratch {
    pub probe: Option<Probe>,
    /// Most tokens one forward call takes.
    pub max_t: usize,
    /// Rows of the activation buffers: a single-sequence call with `Logits::Last` longer than
    /// this runs as micro-batches of `ubatch` tokens (same results, bit for bit: every kernel
    /// computes a token's row the same way whatever else is in the batch).
    ubatch: usize,
    pub x: Vec<f32>,  // (T, dim) residual stream
    pub xb: Vec<f32>, // (T, dim) normed input / block output
    /// (T, max(ffn_dim, q_dim)): the attention output, then (T, ffn_dim) the gate (the two
    /// are never live at once).
    pub hb: Vec<f32>,
    /// The queries (T, q_dim), this call's keys and values before they go into the cache (T,
    /// kv_dim each), one after the other; then (T, ffn_dim) the up projection (dead by then):
    /// room for the larger of the two.
    pub qkv_up: Vec<f32>,
    pub logits: Vec<f32>, // (T or n_seqs, vocab)
    n_logits: usize,
    n_hidden: usize,
    vocab: usize,
}

impl Scratch {
    pub fn new(m: &Model, max_t: usize, mode: Logits) -> Self {
        let max_t = max_t.max(1);
        match mode {
            // Prompts: activations for UBATCH tokens, longer calls in micro-batches.
            Logits::Last => Self::sized(m, max_t, max_t.min(UBATCH), 1),
            Logits::All => Self::with_seqs(m, max_t, max_t),
            Logits::Hidden => Self::with_seqs(m, max_t, 1),
        }
    }

    /// Room for `max_t` tokens per call and the last-token logits of up to `max_seqs` sequences
    /// (or of `max_seqs` tokens with `Logits::All`).
    pub fn with_seqs(m: &Model, max_t: usize, max_seqs: usize) -> Self {
        let max_t = max_t.max(1);
        Self::sized(m, max_t, max_t, max_seqs)
    }

    /// Room for calls of up to `max_t` tokens, activations for `ubatch` of them, last-token
    /// logits for `max_seqs` sequences (or `max_seqs` rows of `Logits::All`).
    fn sized(m: &Model, max_t: usize, ubatch: usize, max_seqs: usize) -> Self {
        let c = &m.config;
        let u = ubatch;
        Scratch {
            probe: None,
            max_t,
            ubatch,
            x: vec![0.0; u * c.dim],
            xb: vec![0.0; u * c.dim],
            hb: vec![0.0; u * c.ffn_dim.max(c.q_dim())],
            qkv_up: vec![0.0; u * c.ffn_dim.max(c.q_dim() + 2 * c.kv_dim())],
            logits: vec![0.0; max_seqs.clamp(1, max_t) * c.vocab_size],
            n_logits: 0,
            n_hidden: 0,
            vocab: c.vocab_size,
        }
    }
    /// Logits of sequence `i`'s last token after a batched `Logits::Last` call (row `i` of
    /// `logits()`).
    pub fn seq_logits(&self, i: usize) -> &[f32] {
        &self.logits()[i * self.vocab..(i + 1) * self.vocab]
    }
    /// The final-normed hidden states of the last `Logits::Hidden` call: (t, dim).
    pub fn hidden(&self) -> &[f32] {
        &self.xb[..self.n_hidden]
    }
    /// The logits of the last call: (vocab) or (t, vocab).
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.n_logits]
    }
}

/// llama.cpp's rotation for a quantized KV cache (its `attn_rot_k` / `attn_rot_v`, on when the
/// cache type is quantized and head_dim % 64 == 0): queries and keys are multiplied by an
/// orthonormal Walsh-Hadamard matrix H_k after RoPE, values by H_64, and the attention output by
/// H_64 again (H is its own inverse). Scores and outputs are unchanged in exact arithmetic, but a
/// rotated row spreads its outliers over the block, so the 32-value blocks quantize with far less
/// error (SmolLM2 Q4_0 cache: +17% perplexity without, see the report in kv_quant.rs). Returns
/// (k, v) block sizes: k the largest power of two >= 64 dividing head_dim, v 64.
fn kv_rotation(head_dim: usize, kv: KvType) -> Option<(usize, usize)> {
    if kv.block_len() == 1 || head_dim % 64 != 0 {
        return None;
    }
    let mut n = 64;
    while head_dim % (2 * n) == 0 {
        n *= 2;
    }
    Some((n, 64))
}

/// x <- H_n x on every run of `n` values: H_n the orthonormal Walsh-Hadamard matrix in Sylvester
/// order (llama.cpp's `ggml_gen_hadamard`), as a fast transform and one scaling by 1/sqrt(n).
fn hadamard(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for r in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    (r[j], r[j + h]) = (r[j] + r[j + h], r[j] - r[j + h]);
                }
            }
            h *= 2;
        }
        r.iter_mut().for_each(|v| *v *= scale);
    }
}

fn add_bias(x: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
    }
}

/// Runs `tokens` at positions `pos..pos + tokens.len()`, appending their K/V to `kv`, and leaves
/// logits in `s.logits()`. Allocates nothing.
pub fn forward(
    m: &Model,
    b: &dyn Backend,
    tokens: &[u32],
    pos: usize,
    kv: &mut KvCache,
    s: &mut Scratch,
    mode: Logits,
) -> Result<()> {
    forward_batch(m, b, &mut [SeqStep { tokens, pos, kv }], s, mode)
}

/// Several sequences' new tokens in one pass: every weight matrix is read once for all of them
/// (continuous batching), attention runs per sequence over its own cache. With `Logits::Last`,
/// `s.seq_logits(i)` is the last token of sequence `i`; with `All`/`Hidden` rows follow the
/// sequences' tokens in order. A token's result does not depend on what else is in the batch
/// (the kernels compute each token's row in the same order whatever the batch). Allocates nothing.
pub fn forward_batch(
    m: &Model,
    b: &dyn Backend,
    seqs: &mut [SeqStep],
    s: &mut Scratch,
    mode: Logits,
) -> Result<()> {
    let c = &m.config;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    if seqs.is_empty() || seqs.iter().any(|q| q.tokens.is_empty()) || t > s.max_t {
        return Err(Error::msg(format!(
            "forward: {t} tokens in {} sequences in one call (1..={} tokens, none empty)",
            seqs.len(),
            s.max_t
        )));
    }
    let out_rows = match mode {
        Logits::Last => seqs.len(),
        Logits::All => t,
        Logits::Hidden => 0,
    };
    if out_rows * c.vocab_size > s.logits.len() {
        return Err(Error::msg(format!(
            "forward: {out_rows} rows of logits asked, the scratch holds {}",
            s.logits.len() / c.vocab_size
        )));
    }
    for q in seqs.iter() {
        if q.pos + q.tokens.len() > q.kv.max_seq {
            return Err(Error::msg(format!(
                "context full: {} positions needed, the context holds {}",
                q.pos + q.tokens.len(),
                q.kv.max_seq
            )));
        }
        if let Some(&bad) = q.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::msg(format!(
                "token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
    }
    if t <= s.ubatch {
        return step(m, b, seqs, s, Some(mode));
    }
    // Longer than the activation buffers: a single sequence's prompt, in micro-batches; only the
    // last one computes logits.
    if seqs.len() != 1 || mode != Logits::Last {
        return Err(Error::msg(format!(
            "forward: {t} tokens in {} sequences in one call: this scratch splits only a single \
             sequence's last-token call into micro-batches of {}",
            seqs.len(),
            s.ubatch
        )));
    }
    let q = &mut seqs[0];
    let mut c0 = 0;
    while c0 < t {
        let c1 = (c0 + s.ubatch).min(t);
        let part = SeqStep {
            tokens: &q.tokens[c0..c1],
            pos: q.pos + c0,
            kv: &mut *q.kv,
        };
        step(m, b, &mut [part], s, (c1 == t).then_some(Logits::Last))?;
        c0 = c1;
    }
    Ok(())
}

/// One pass of at most `s.ubatch` checked tokens; `None`: no output at all (a prompt's earlier
/// micro-batches).
fn step(
    m: &Model,
    b: &dyn Backend,
    seqs: &mut [SeqStep],
    s: &mut Scratch,
    mode: Option<Logits>,
) -> Result<()> {
    let c = &m.config;
    let w = &m.weights;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    debug_assert!(t <= s.ubatch);
    let (dim, qd, kvd, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let (x, xb) = (&mut s.x[..t * dim], &mut s.xb[..t * dim]);
    let (hb_att, qkv_up) = (
        &mut s.hb[..t * ffn.max(qd)],
        &mut s.qkv_up[..t * ffn.max(qd + 2 * kvd)],
    );
    let probe = &mut s.probe;
    macro_rules! probe {
        ($name:expr, $l:expr, $v:expr) => {
            if let Some(p) = probe.as_mut() {
                p($name, $l, $v)
            }
        };
    }
    let shape = |q: &SeqStep| AttnShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        t: q.tokens.len(),
        pos0: q.pos,
        window: c.sliding_window,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    };

    let mut row = 0;
    for q in seqs.iter() {
        let r = row..row + q.tokens.len();
        b.embed(&mut x[r.start * dim..r.end * dim], &w.token_embd, q.tokens);
        row = r.end;
    }
    probe!("embd", 0, x);
    for (l, lw) in w.layers.iter().enumerate() {
        // h = x + W_o attn(rope(W_q n), rope(W_k n), W_v n), n = rmsnorm(x)
        b.rmsnorm(xb, x, &lw.attn_norm, c.norm_eps);
        probe!("attn_norm", l, xb);
        let (q, kv_new) = qkv_up[..t * (qd + 2 * kvd)].split_at_mut(t * qd);
        let (k, v) = kv_new.split_at_mut(t * kvd);
        b.matmul_many(
            &mut [&mut *q, &mut *k, &mut *v],
            xb,
            &[&lw.attn_q, &lw.attn_k, &lw.attn_v],
            t,
        );
        add_bias(q, &lw.attn_q_bias);
        add_bias(k, &lw.attn_k_bias);
        add_bias(v, &lw.attn_v_bias);
        probe!("Vcur", l, v);
        let att = &mut hb_att[..t * qd];
        // Per sequence: rotate at its positions, store into its cache (rounded to f16 for an
        // F16 cache), attend over all of that cache (the shape says which positions are filled,
        // so a kernel can size its scratch for the cache once instead of growing it).
        let mut row = 0;
        for sq in seqs.iter_mut() {
            let (r0, r1) = (row, row + sq.tokens.len());
            row = r1;
            let (qs, ks, vs) = (
                &mut q[r0 * qd..r1 * qd],
                &mut k[r0 * kvd..r1 * kvd],
                &mut v[r0 * kvd..r1 * kvd],
            );
            b.rope(qs, r1 - r0, c.n_heads, c.head_dim, sq.pos, &m.rope);
            b.rope(ks, r1 - r0, c.n_kv_heads, c.head_dim, sq.pos, &m.rope);
            let rot = kv_rotation(c.head_dim, sq.kv.kv_type());
            if let Some((nk, nv)) = rot {
                hadamard(qs, nk);
                hadamard(ks, nk);
                hadamard(vs, nv);
            }
            sq.kv.k[l].store(sq.pos * kvd, ks);
            sq.kv.v[l].store(sq.pos * kvd, vs);
            let n = sq.kv.k[l].len();
            let (kc, vc) = (sq.kv.k[l].slice(n), sq.kv.v[l].slice(n));
            let out = &mut att[r0 * qd..r1 * qd];
            b.attention(out, qs, kc, vc, &shape(sq));
            if let Some((_, nv)) = rot {
                hadamard(out, nv);
            }
        }
        probe!("Qcur", l, q);
        probe!("Kcur", l, k);
        probe!("kqv_out", l, att);
        b.matmul(xb, att, &lw.attn_output, t);
        add_bias(xb, &lw.attn_output_bias);
        probe!("attn_out", l, xb);
        b.add_assign(x, xb);
        // out = h + W_down(silu(W_gate n) * W_up n), n = rmsnorm(h)
        probe!("ffn_inp", l, x);
        b.rmsnorm(xb, x, &lw.ffn_norm, c.norm_eps);
        probe!("ffn_norm", l, xb);
        let (hb, hb2) = (&mut hb_att[..t * ffn], &mut qkv_up[..t * ffn]);
        b.matmul_many(
            &mut [&mut *hb, &mut *hb2],
            xb,
            &[&lw.ffn_gate, &lw.ffn_up],
            t,
        );
        add_bias(hb, &lw.ffn_gate_bias);
        add_bias(hb2, &lw.ffn_up_bias);
        probe!("ffn_gate", l, hb);
        probe!("ffn_up", l, hb2);
        b.silu_mul(hb, hb2);
        probe!("ffn_swiglu", l, hb);
        b.matmul(xb, hb, &lw.ffn_down, t);
        add_bias(xb, &lw.ffn_down_bias);
        probe!("ffn_out", l, xb);
        b.add_assign(x, xb);
        probe!("l_out", l, x);
    }
    let Some(mode) = mode else {
        s.n_logits = 0;
        return Ok(());
    };
    if mode != Logits::Last {
        // Every row, in place of the block output.
        b.rmsnorm(xb, x, &w.output_norm, c.norm_eps);
        probe!("result_norm", 0, xb);
        if mode == Logits::Hidden {
            s.n_logits = 0;
            s.n_hidden = t * dim;
            return Ok(());
        }
        s.n_logits = t * c.vocab_size;
        b.matmul(&mut s.logits[..s.n_logits], xb, &w.output, t);
    } else {
        // The last row of each sequence, gathered to the front of x: sequence i's last row is
        // at index >= i, so no row is overwritten before it is read.
        let n = seqs.len();
        let mut end = 0;
        for (i, sq) in seqs.iter().enumerate() {
            end += sq.tokens.len();
            x.copy_within((end - 1) * dim..end * dim, i * dim);
        }
        let xn = &mut xb[..n * dim];
        b.rmsnorm(xn, &x[..n * dim], &w.output_norm, c.norm_eps);
        probe!("result_norm", 0, xn);
        s.n_logits = n * c.vocab_size;
        b.matmul(&mut s.logits[..s.n_logits], xn, &w.output, n);
    }
    if let Some(p) = s.probe.as_mut() {
        p("result_output", 0, &s.logits[..s.n_logits]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast transform is llama.cpp's dense Sylvester matrix (entries +-1/sqrt(n), the sign of
    /// (-1)^popcount(i & j)) times the vector, and its own inverse.
    #[test]
    fn hadamard_is_the_sylvester_matrix_and_an_involution() {
        for n in [64, 128] {
            let x: Vec<f32> = (0..2 * n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut y = x.clone();
            hadamard(&mut y, n);
            for (row, (xs, ys)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                for (i, &yi) in ys.iter().enumerate() {
                    let dense: f64 = (0..n)
                        .map(|j| {
                            let sign = if (i & j).count_ones() % 2 == 0 {
                                1.0
                            } else {
                                -1.0
                            };
                            sign * xs[j] as f64 / (n as f64).sqrt()
                        })
                        .sum();
                    assert!((yi as f64 - dense).abs() < 1e-4, "n {n} row {row} [{i}]");
                }
            }
            hadamard(&mut y, n);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4));
        }
    }

    #[test]
    fn rotation_only_for_quantized_caches_with_heads_of_64() {
        assert_eq!(kv_rotation(64, KvType::Q8_0), Some((64, 64)));
        assert_eq!(kv_rotation(128, KvType::Q4_0), Some((128, 64)));
        assert_eq!(kv_rotation(192, KvType::Q4_0), Some((64, 64)));
        assert_eq!(kv_rotation(96, KvType::Q8_0), None);
        assert_eq!(kv_rotation(64, KvType::F16), None);
        assert_eq!(kv_rotation(128, KvType::F32), None);
    }
}
