//! The LLaMA forward pass: one function over preallocated buffers and a preallocated KV cache.

use crate::lora::{ActiveLora, Target, MAX_LORA_RANK};
use crate::model::Model;
use cria_core::{Error, Result};
use cria_kernels::{AttnShape, Backend, CpuBackend, KvType, Rows, Weight};

/// K and V for every layer and position, allocated once for `max_seq` positions by the backend.
pub struct KvCache<B: Backend = CpuBackend> {
    pub k: Vec<B::Kv>, // per layer (max_seq, kv_dim)
    pub v: Vec<B::Kv>, // per layer (max_seq, kv_dim)
    pub max_seq: usize,
    kv_type: KvType,
    kv_dim: usize,
    dev: B::Device,
}

impl<B: Backend> KvCache<B> {
    /// An F16 cache (llama.cpp's default).
    pub fn new(m: &Model<B>, max_seq: usize) -> Self {
        Self::with_type(m, max_seq, KvType::default())
    }

    /// A cache of `kv_type`. Panics if the model's heads are not whole blocks of a quantized
    /// type: check `KvType::check_head_dim` first (`try_with_type` does).
    pub fn with_type(m: &Model<B>, max_seq: usize, kv_type: KvType) -> Self {
        Self::try_with_type(m, max_seq, kv_type).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A cache of `kv_type`, or the reason this model cannot have one.
    pub fn try_with_type(m: &Model<B>, max_seq: usize, kv_type: KvType) -> Result<Self> {
        kv_type
            .check_head_dim(m.config.head_dim)
            .map_err(Error::msg)?;
        let kv_dim = m.config.kv_dim();
        let n = max_seq * kv_dim;
        let nl = m.config.n_layers;
        let dev = &m.device;
        Ok(KvCache {
            k: (0..nl)
                .map(|_| B::alloc_kv(dev, kv_type, n))
                .collect::<Result<_>>()?,
            v: (0..nl)
                .map(|_| B::alloc_kv(dev, kv_type, n))
                .collect::<Result<_>>()?,
            max_seq,
            kv_type,
            kv_dim,
            dev: dev.clone(),
        })
    }

    /// The element type (every layer's rows have the same).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of K and V that attention reads per cached position, over all layers.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.k.len() * self.kv_type.row_bytes(self.kv_dim)
    }

    /// Copies positions 0..n of every layer from `src`, a cache of the same model and type (a
    /// server slot reusing another's prompt prefix). Nothing is copied between different types.
    pub fn copy_prefix_from(&mut self, src: &KvCache<B>, n: usize) {
        for (d, s) in self
            .k
            .iter_mut()
            .chain(self.v.iter_mut())
            .zip(src.k.iter().chain(&src.v))
        {
            B::kv_copy_prefix(&self.dev, d, s, n * src.kv_dim);
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

/// One sequence's part of a batched forward: its new tokens, the position of the first, its
/// own KV cache, and the LoRA adapters it runs with (empty: the base model).
pub struct SeqStep<'a, B: Backend = CpuBackend> {
    pub tokens: &'a [u32],
    pub pos: usize,
    pub kv: &'a mut KvCache<B>,
    pub lora: &'a [ActiveLora<B>],
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

/// Activations for up to `max_t` tokens per call, in the backend's buffers. Sized once; the
/// forward never allocates.
pub struct Scratch<B: Backend = CpuBackend> {
    pub probe: Option<Probe>,
    /// Every row exactly as a single-token call computes it (speculative decoding's verify
    /// forward). Only an F32 cache needs it: its attention sums probabilities times V in
    /// another order for calls of two tokens or more (llama.cpp's, whose prompt numbers it
    /// follows), so with this set each row attends in a call of its own.
    pub decode_exact: bool,
    /// Most tokens one forward call takes.
    pub max_t: usize,
    /// Rows of the activation buffers: a single-sequence call with `Logits::Last` longer than
    /// this runs as micro-batches of `ubatch` tokens (same results, bit for bit: every kernel
    /// computes a token's row the same way whatever else is in the batch).
    ubatch: usize,
    pub x: B::Buf,  // (T, dim) residual stream
    pub xb: B::Buf, // (T, dim) normed input / block output
    /// (T, max(ffn_dim, q_dim)): the attention output, then (T, ffn_dim) the gate (the two
    /// are never live at once).
    pub hb: B::Buf,
    /// (T, max(q_dim, ffn_dim)): the queries, then the up projection (dead by then).
    pub q_up: B::Buf,
    /// (T, kv_dim) each: this call's keys and values before they go into the cache.
    pub k: B::Buf,
    pub v: B::Buf,
    pub logits: B::Buf, // (T or n_seqs, vocab)
    /// LoRA scratch: the down-projected rows (ubatch, MAX_LORA_RANK), and rows of an up
    /// projection (at least one row of the widest product).
    pub lora_down: B::Buf,
    pub lora_up: B::Buf,
    /// The logits or hidden states of the last call, read back to the host (CPU: nothing).
    out: B::Host,
    n_logits: usize,
    n_hidden: usize,
    vocab: usize,
}

impl<B: Backend> Scratch<B> {
    /// `try_new`, for a backend whose allocations cannot fail (the CPU's: host memory, which
    /// aborts when out, as `Vec` does). Panics on a backend's allocation error.
    pub fn new(m: &Model<B>, max_t: usize, mode: Logits) -> Self {
        Self::try_new(m, max_t, mode).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Room for calls of up to `max_t` tokens giving `mode`'s output, or the backend's
    /// allocation error (a device out of memory).
    pub fn try_new(m: &Model<B>, max_t: usize, mode: Logits) -> Result<Self> {
        let max_t = max_t.max(1);
        match mode {
            // Prompts: activations for UBATCH tokens, longer calls in micro-batches.
            Logits::Last => Self::sized(m, max_t, max_t.min(UBATCH), 1),
            Logits::All => Self::try_with_seqs(m, max_t, max_t),
            Logits::Hidden => Self::try_with_seqs(m, max_t, 1),
        }
    }

    /// `try_with_seqs`, panicking on a backend's allocation error (as `new`).
    pub fn with_seqs(m: &Model<B>, max_t: usize, max_seqs: usize) -> Self {
        Self::try_with_seqs(m, max_t, max_seqs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Room for `max_t` tokens per call and the last-token logits of up to `max_seqs` sequences
    /// (or of `max_seqs` tokens with `Logits::All`), or the backend's allocation error.
    pub fn try_with_seqs(m: &Model<B>, max_t: usize, max_seqs: usize) -> Result<Self> {
        let max_t = max_t.max(1);
        Self::sized(m, max_t, max_t, max_seqs)
    }

    /// Room for calls of up to `max_t` tokens, activations for `ubatch` of them, last-token
    /// logits for `max_seqs` sequences (or `max_seqs` rows of `Logits::All`).
    fn sized(m: &Model<B>, max_t: usize, ubatch: usize, max_seqs: usize) -> Result<Self> {
        let c = &m.config;
        let u = ubatch;
        let alloc = |n| B::alloc(&m.device, n);
        let n_logits = max_seqs.clamp(1, max_t) * m.n_logits();
        Ok(Scratch {
            probe: None,
            decode_exact: false,
            max_t,
            ubatch,
            x: alloc(u * c.dim)?,
            xb: alloc(u * c.dim)?,
            hb: alloc(u * c.ffn_dim.max(c.q_dim()))?,
            q_up: alloc(u * c.ffn_dim.max(c.q_dim()))?,
            k: alloc(u * c.kv_dim())?,
            v: alloc(u * c.kv_dim())?,
            logits: alloc(n_logits)?,
            lora_down: alloc(u.max(max_seqs) * MAX_LORA_RANK)?,
            lora_up: alloc((u * c.ffn_dim.max(c.q_dim()).max(c.dim)).max(c.vocab_size))?,
            out: B::alloc_host(&m.device, n_logits.max(u * c.dim))?,
            n_logits: 0,
            n_hidden: 0,
            vocab: m.n_logits(),
        })
    }
    /// Logits of sequence `i`'s last token after a batched `Logits::Last` call (row `i` of
    /// `logits()`).
    pub fn seq_logits(&self, i: usize) -> &[f32] {
        &self.logits()[i * self.vocab..(i + 1) * self.vocab]
    }
    /// The final-normed hidden states of the last `Logits::Hidden` call: (t, dim).
    pub fn hidden(&self) -> &[f32] {
        B::host_view(&self.xb, &self.out, self.n_hidden)
    }
    /// The logits of the last call: (vocab) or (t, vocab).
    pub fn logits(&self) -> &[f32] {
        B::host_view(&self.logits, &self.out, self.n_logits)
    }
    /// Rows of logits this scratch holds.
    fn logit_rows(&self) -> usize {
        B::buf_len(&self.logits) / self.vocab.max(1)
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

/// Runs `tokens` at positions `pos..pos + tokens.len()`, appending their K/V to `kv`, and leaves
/// logits in `s.logits()`. Allocates nothing.
pub fn forward<B: Backend>(
    m: &Model<B>,
    b: &B,
    tokens: &[u32],
    pos: usize,
    kv: &mut KvCache<B>,
    s: &mut Scratch<B>,
    mode: Logits,
) -> Result<()> {
    forward_batch(
        m,
        b,
        &mut [SeqStep {
            tokens,
            pos,
            kv,
            lora: &[],
        }],
        s,
        mode,
    )
}

/// Several sequences' new tokens in one pass: every weight matrix is read once for all of them
/// (continuous batching), attention runs per sequence over its own cache. With `Logits::Last`,
/// `s.seq_logits(i)` is the last token of sequence `i`; with `All`/`Hidden` rows follow the
/// sequences' tokens in order. A token's result does not depend on what else is in the batch
/// (the kernels compute each token's row in the same order whatever the batch). Allocates nothing.
pub fn forward_batch<B: Backend>(
    m: &Model<B>,
    b: &B,
    seqs: &mut [SeqStep<B>],
    s: &mut Scratch<B>,
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
    if out_rows > s.logit_rows() {
        return Err(Error::msg(format!(
            "forward: {out_rows} rows of logits asked, the scratch holds {}",
            s.logit_rows()
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
            lora: q.lora,
        };
        step(m, b, &mut [part], s, (c1 == t).then_some(Logits::Last))?;
        c0 = c1;
    }
    Ok(())
}

/// What `project` needs to add the sequences' LoRA terms: each sequence's rows of this
/// product and its adapters, the layer, and the scratch for the low-rank products.
struct LoraRows<'a, 'b, B: Backend> {
    seqs: &'a [SeqStep<'b, B>],
    /// The product's rows are one per sequence (its last token: the output head under
    /// `Logits::Last`), not one per token.
    last_only: bool,
    layer: Option<usize>,
    down: &'a mut B::Buf,
    up: &'a mut B::Buf,
}

/// The one place the forward multiplies by weights: outs[i] (t, ws[i].rows) = x (t, cols) @
/// ws[i]^T, as one `matmul` or one `matmul_many` job for the whole batch; then, per sequence,
/// the low-rank term of each of its adapters over `targets[i]`, on its own rows (none: nothing
/// more is done, and the base's results are bit for bit those without adapters).
fn project<B: Backend, const N: usize>(
    b: &B,
    outs: [&mut B::Buf; N],
    x: &B::Buf,
    ws: [&Weight<B>; N],
    t: usize,
    lora: &mut LoraRows<B>,
    targets: [Target; N],
) {
    let mut outs = outs;
    if N == 1 {
        b.matmul(&mut *outs[0], x, &ws[0].base, t)
    } else {
        b.matmul_many(outs.each_mut().map(|o| &mut **o), x, ws.map(|w| &w.base), t)
    }
    lora_terms(b, &mut outs, x, lora, targets, None);
}

/// The adapters' terms of `project` (only sequence `only`'s, if given).
fn lora_terms<B: Backend, const N: usize>(
    b: &B,
    outs: &mut [&mut B::Buf; N],
    x: &B::Buf,
    lora: &mut LoraRows<B>,
    targets: [Target; N],
    only: Option<usize>,
) {
    let LoraRows {
        seqs,
        last_only,
        layer,
        down,
        up,
    } = lora;
    // Per product and adapter slot k: the k-th adapter of every sequence in one `lora_batch`
    // (disjoint rows; up to LORA_BATCH at a time, no allocation), so a backend can run the
    // sequences' terms together. Each output still gets its adapters in the sequence's order.
    const LORA_BATCH: usize = 64;
    let slots = seqs.iter().map(|q| q.lora.len()).max().unwrap_or(0);
    for (out, &target) in outs.iter_mut().zip(&targets) {
        for k in 0..slots {
            let mut batch = None;
            let mut nb = 0;
            for (i, (r, q)) in seq_rows(seqs).zip(seqs.iter()).enumerate() {
                if only.is_some_and(|o| o != i) {
                    continue;
                }
                let Some(al) = q.lora.get(k) else { continue };
                let Some(p) = al.lora.pair(target, *layer) else {
                    continue;
                };
                let r = if *last_only { Rows::new(i, i + 1) } else { r };
                let term = (r, p, al.scale * p.scale);
                batch.get_or_insert([term; LORA_BATCH])[nb] = term;
                nb += 1;
                if nb == LORA_BATCH {
                    b.lora_batch(out, x, &batch.as_ref().expect("filled")[..nb], down, up);
                    nb = 0;
                }
            }
            if let (Some(ts), true) = (&batch, nb > 0) {
                b.lora_batch(out, x, &ts[..nb], down, up);
            }
        }
    }
}

/// Each sequence's rows of the batch, in order.
fn seq_rows<'a, B: Backend>(seqs: &'a [SeqStep<B>]) -> impl Iterator<Item = Rows> + 'a {
    seqs.iter().scan(0, |r0, q| {
        let r = Rows::new(*r0, *r0 + q.tokens.len());
        *r0 = r.end;
        Some(r)
    })
}

/// One pass of at most `s.ubatch` checked tokens; `None`: no output at all (a prompt's earlier
/// micro-batches).
fn step<B: Backend>(
    m: &Model<B>,
    b: &B,
    seqs: &mut [SeqStep<B>],
    s: &mut Scratch<B>,
    mode: Option<Logits>,
) -> Result<()> {
    let c = &m.config;
    let w = &m.weights;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    debug_assert!(t <= s.ubatch);
    let (dim, qd, kvd, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let Scratch {
        x,
        xb,
        hb,
        q_up,
        k,
        v,
        logits,
        lora_down,
        lora_up,
        probe,
        decode_exact,
        ..
    } = s;
    let decode_exact = *decode_exact;
    macro_rules! probe {
        ($name:expr, $l:expr, $buf:expr, $n:expr) => {
            if let Some(p) = probe.as_mut() {
                b.inspect($buf, $n, &mut |v| p($name, $l, v))
            }
        };
    }
    let bias = |x: &mut B::Buf, bias: &Option<B::Buf>| {
        if let Some(bias) = bias {
            b.add_bias(x, bias, t)
        }
    };
    let shape = |q: &SeqStep<B>| AttnShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        t: q.tokens.len(),
        pos0: q.pos,
        window: c.sliding_window,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    };
    for (q, r) in seqs.iter().zip(seq_rows(seqs)) {
        // An adapter's own embedding table (PEFT modules_to_save), else the base's.
        let table = q.lora.iter().find_map(|a| a.lora.token_embd.as_ref());
        b.embed(x, r, &table.unwrap_or(&w.token_embd).base, q.tokens);
    }
    probe!("embd", 0, x, t * dim);
    let any_lora = seqs.iter().any(|q| !q.lora.is_empty());
    // The LoRA context of one product: the batch's sequences (none when no sequence has an
    // adapter, so the base path is untouched), the layer, the scratch.
    macro_rules! lora {
        ($seqs:expr, $layer:expr, $last:expr) => {
            &mut LoraRows {
                seqs: if any_lora { $seqs } else { &[] },
                last_only: $last,
                layer: $layer,
                down: &mut *lora_down,
                up: &mut *lora_up,
            }
        };
    }
    for (l, lw) in w.layers.iter().enumerate() {
        // h = x + W_o attn(rope(W_q n), rope(W_k n), W_v n), n = rmsnorm(x)
        b.rmsnorm(xb, x, &lw.attn_norm, c.norm_eps, t);
        probe!("attn_norm", l, xb, t * dim);
        project(
            b,
            [&mut *q_up, &mut *k, &mut *v],
            xb,
            [&lw.attn_q, &lw.attn_k, &lw.attn_v],
            t,
            lora!(seqs, Some(l), false),
            [Target::Q, Target::K, Target::V],
        );
        bias(q_up, &lw.attn_q_bias);
        bias(k, &lw.attn_k_bias);
        bias(v, &lw.attn_v_bias);
        probe!("Vcur", l, v, t * kvd);
        let att = &mut *hb;
        // Per sequence: rotate at its positions, store into its cache (rounded to f16 for an
        // F16 cache), attend over all of that cache (the shape says which positions are filled,
        // so a kernel can size its scratch for the cache once instead of growing it).
        let mut r0 = 0;
        for sq in seqs.iter_mut() {
            let r = Rows::new(r0, r0 + sq.tokens.len());
            r0 = r.end;
            b.rope(q_up, r, c.n_heads, c.head_dim, sq.pos, &m.rope);
            b.rope(k, r, c.n_kv_heads, c.head_dim, sq.pos, &m.rope);
            let rot = kv_rotation(c.head_dim, sq.kv.kv_type());
            if let Some((nk, nv)) = rot {
                b.hadamard(q_up, r, qd, nk);
                b.hadamard(k, r, kvd, nk);
                b.hadamard(v, r, kvd, nv);
            }
            b.kv_store(&mut sq.kv.k[l], sq.pos, k, r, kvd);
            b.kv_store(&mut sq.kv.v[l], sq.pos, v, r, kvd);
            if decode_exact && sq.kv.kv_type() == KvType::F32 && r.len() > 1 {
                for i in 0..r.len() {
                    let one = Rows::new(r.start + i, r.start + i + 1);
                    let s1 = AttnShape {
                        t: 1,
                        pos0: sq.pos + i,
                        ..shape(sq)
                    };
                    b.attention(att, q_up, one, &sq.kv.k[l], &sq.kv.v[l], &s1);
                }
            } else {
                b.attention(att, q_up, r, &sq.kv.k[l], &sq.kv.v[l], &shape(sq));
            }
            if let Some((_, nv)) = rot {
                b.hadamard(att, r, qd, nv);
            }
        }
        probe!("Qcur", l, q_up, t * qd);
        probe!("Kcur", l, k, t * kvd);
        probe!("kqv_out", l, att, t * qd);
        project(
            b,
            [&mut *xb],
            att,
            [&lw.attn_output],
            t,
            lora!(seqs, Some(l), false),
            [Target::O],
        );
        bias(xb, &lw.attn_output_bias);
        probe!("attn_out", l, xb, t * dim);
        b.add_assign(x, xb, t, dim);
        // out = h + W_down(silu(W_gate n) * W_up n), n = rmsnorm(h)
        probe!("ffn_inp", l, x, t * dim);
        b.rmsnorm(xb, x, &lw.ffn_norm, c.norm_eps, t);
        probe!("ffn_norm", l, xb, t * dim);
        project(
            b,
            [&mut *hb, &mut *q_up],
            xb,
            [&lw.ffn_gate, &lw.ffn_up],
            t,
            lora!(seqs, Some(l), false),
            [Target::Gate, Target::Up],
        );
        bias(hb, &lw.ffn_gate_bias);
        bias(q_up, &lw.ffn_up_bias);
        probe!("ffn_gate", l, hb, t * ffn);
        probe!("ffn_up", l, q_up, t * ffn);
        b.silu_mul(hb, q_up, t, ffn);
        probe!("ffn_swiglu", l, hb, t * ffn);
        project(
            b,
            [&mut *xb],
            hb,
            [&lw.ffn_down],
            t,
            lora!(seqs, Some(l), false),
            [Target::Down],
        );
        bias(xb, &lw.ffn_down_bias);
        probe!("ffn_out", l, xb, t * dim);
        b.add_assign(x, xb, t, dim);
        probe!("l_out", l, x, t * dim);
    }
    // What the host may read after this call is what it read back: nothing else (a device
    // backend's staging holds one output at a time).
    s.n_logits = 0;
    s.n_hidden = 0;
    let Some(mode) = mode else {
        return Ok(());
    };
    // Logits::Last: the last row of each sequence, gathered to the front of x (sequence i's
    // last row is at index >= i, so no row is overwritten before it is read); the others: every
    // row, in place of the block output.
    let n = match mode {
        Logits::Last => {
            for (i, r) in seq_rows(seqs).enumerate() {
                b.copy_row(x, r.end - 1, i, dim);
            }
            seqs.len()
        }
        Logits::All | Logits::Hidden => t,
    };
    b.rmsnorm(xb, x, &w.output_norm, c.norm_eps, n);
    probe!("result_norm", 0, xb, n * dim);
    if mode == Logits::Hidden {
        b.read_back(xb, n * dim, &mut s.out);
        s.n_hidden = n * dim;
        return Ok(());
    }
    let last = mode == Logits::Last;
    project(
        b,
        [&mut *logits],
        xb,
        [&w.output],
        n,
        lora!(seqs, None, last),
        [Target::Output],
    );
    // A sequence whose adapter brings its own head (PEFT modules_to_save): its rows again,
    // through that head, plus its adapters' terms on the output.
    if any_lora {
        for (i, (q, r)) in seqs.iter().zip(seq_rows(seqs)).enumerate() {
            if let Some(head) = q.lora.iter().find_map(|a| a.lora.output_replace.as_ref()) {
                let r = if last { Rows::new(i, i + 1) } else { r };
                b.matmul_rows(logits, xb, r, &head.base);
                let mut outs = [&mut *logits];
                lora_terms(
                    b,
                    &mut outs,
                    xb,
                    lora!(seqs, None, last),
                    [Target::Output],
                    Some(i),
                );
            }
        }
    }
    b.read_back(logits, n * m.n_logits(), &mut s.out);
    s.n_logits = n * m.n_logits();
    if let Some(p) = probe.as_mut() {
        p("result_output", 0, B::host_view(logits, &s.out, s.n_logits))
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
