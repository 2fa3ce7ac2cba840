//! The `Backend` trait: what the forward pass is written against. The backend owns every byte the
//! forward touches (activation buffers, KV caches, prepared weights, norm vectors and biases) and
//! every operation on them; the forward only says which op runs on which rows. docs/BACKENDS.md
//! describes how a CUDA backend and a training backend map onto it.

use crate::{AttnShape, KvType, Rope};
use cria_core::{DType, Tensor};

/// Rows `start..end` of an activation buffer, in rows of the width the op knows from its shape
/// (`dim`, `n_heads * head_dim`, ...): how an op addresses one sequence's part of a batch. A
/// device backend turns it into a pointer offset (cudarc: `buf.slice(start * width..end *
/// width)`); the CPU backend into a sub-slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub start: usize,
    pub end: usize,
}

impl Rows {
    pub fn new(start: usize, end: usize) -> Rows {
        Rows { start, end }
    }
    pub fn len(self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
    /// The values of these rows in a buffer of rows of `width`.
    pub fn values(self, width: usize) -> std::ops::Range<usize> {
        self.start * width..self.end * width
    }
}

/// The ops of a LLaMA forward over memory the backend allocated. Every call is in order with
/// the ones before it (a device backend queues them on one stream); `read_back` is where the
/// host waits for the results. Activation ops over a whole batch take `t`, the batch's rows
/// (rows `0..t` of their buffers); per-sequence ops take the sequence's `Rows`.
pub trait Backend: Send + Sync + Sized {
    /// What allocation and copies between buffers need, cloned into the model at load so that
    /// caches and scratch buffers are made from the model alone (`KvCache::new(&model, n)`).
    /// CPU: nothing; CUDA: the stream (an `Arc`).
    type Device: Clone + Send + Sync;
    /// f32 values in the backend's memory: activations, and the model's norm weights and
    /// biases. CPU: `Vec<f32>`; CUDA: `CudaSlice<f32>`.
    type Buf: Send + Sync;
    /// Host memory that outputs are read back into (`read_back`, `host_view`). CPU: `()`, its
    /// buffers are host memory already; a device backend: a (pinned) host vector.
    type Host: Send + Sync;
    /// One layer's K or V cache: rows of `kv_dim` values in a `KvType`. CPU: `KvRows`.
    type Kv: Send + Sync;
    /// A weight matrix as `prepare` made it: repacked, uploaded, or as the file has it.
    type Matrix: Send + Sync;

    fn name(&self) -> String;
    /// Whether `matmul`/`embed` run weights of this type.
    fn supports(&self, dtype: DType) -> bool;

    // ---- memory: who allocates what ----

    fn device(&self) -> Self::Device;
    /// `n` f32 values (zero); an error where the memory is not there (a device's). The CPU's
    /// cannot fail (host memory: out of it aborts, as `Vec` does).
    fn alloc(dev: &Self::Device, n: usize) -> cria_core::Result<Self::Buf>;
    /// Host room for `n` values read back from a `Buf` (a device backend's pinned memory may
    /// run out: an error).
    fn alloc_host(dev: &Self::Device, n: usize) -> cria_core::Result<Self::Host>;
    /// A K or V cache of `n` values of `ty` (`n` a multiple of its block length); an error
    /// where the memory is not there (a device's).
    fn alloc_kv(dev: &Self::Device, ty: KvType, n: usize) -> cria_core::Result<Self::Kv>;
    /// A norm weight or bias, at load (an error where the device's memory is not there).
    fn upload(&self, v: Vec<f32>) -> cria_core::Result<Self::Buf>;
    /// Values a `Buf` holds.
    fn buf_len(b: &Self::Buf) -> usize;
    /// Called once per weight matrix at load, after `supports`: the backend may keep it in a
    /// layout of its own (rows interleaved for its GEMM, uploaded to a device), which only its
    /// `matmul` reads. The embedding table goes through `prepare_embedding` instead.
    fn prepare(&self, w: Tensor) -> cria_core::Result<Self::Matrix>;
    /// The embedding table (read a few rows per token by `embed`); `head`: the prepared output
    /// head when the embeddings are tied, which the table may share.
    fn prepare_embedding(
        &self,
        table: Tensor,
        head: Option<&Self::Matrix>,
    ) -> cria_core::Result<Self::Matrix>;
    /// The file tensor a prepared matrix still reads through the file's map, if any (the
    /// loader releases every other page of the file).
    fn mapped(w: &Self::Matrix) -> Option<&Tensor>;

    // ---- the forward's ops ----

    /// Rows `rows` of `out` (width `table.cols()`) = rows `tokens` of `table`, dequantized.
    fn embed(&self, out: &mut Self::Buf, rows: Rows, table: &Self::Matrix, tokens: &[u32]);
    /// Per row of length `w.len()`, rows 0..t: out = x / sqrt(mean(x^2) + eps) * w.
    fn rmsnorm(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Buf, eps: f32, t: usize);
    /// out (t, w.rows()) = x (t, w.cols()) @ w^T.
    fn matmul(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Matrix, t: usize);
    /// outs[i] (t, ws[i].rows()) = x (t, k) @ ws[i]^T for several matrices on the same input
    /// (Q, K and V; gate and up): a backend may convert the input once and run them as one
    /// job. Every output must equal what `matmul` gives it alone.
    fn matmul_many<const N: usize>(
        &self,
        outs: [&mut Self::Buf; N],
        x: &Self::Buf,
        ws: [&Self::Matrix; N],
        t: usize,
    );
    /// Rows `rows` of `out` (width `rows_of_w`) = the same rows of x (width `cols_of_w`) @ w^T:
    /// one sequence's part of a batch through its own matrix (an adapter's replacement head).
    fn matmul_rows(&self, out: &mut Self::Buf, x: &Self::Buf, rows: Rows, w: &Self::Matrix);
    /// A LoRA pair's matrices as `lora` reads them: `a` the down projection (rank rows of the
    /// base's cols), `b` the up projection (the base's rows, rank cols), f32/f16/bf16. By
    /// default each is what `prepare` makes of it.
    fn prepare_lora(
        &self,
        a: Tensor,
        b: Tensor,
    ) -> cria_core::Result<(Self::Matrix, Self::Matrix)> {
        Ok((self.prepare(a)?, self.prepare(b)?))
    }
    /// A LoRA pair's term on rows `rows`: out (width `ad.rows`) += scale * (x (width `ad.cols`)
    /// @ ad.a^T) @ ad.b^T. `tmp` holds at least `rows.len() * ad.rank` values, `tmp2` at least
    /// `ad.rows` (the up projection runs in as many rows at a time as it holds).
    #[allow(clippy::too_many_arguments)]
    fn lora(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        rows: Rows,
        ad: &crate::LoraAdapter<Self>,
        scale: f32,
        tmp: &mut Self::Buf,
        tmp2: &mut Self::Buf,
    );
    /// Several LoRA terms of one product at once, each on its own rows (one per sequence of a
    /// batch, each with its own adapter): `terms` are (rows, pair, scale), their rows in
    /// increasing order and disjoint; every term is what `lora` gives it alone, so a backend
    /// may run them together (the CPU backend: one pool job for all their down projections,
    /// one for the up projections). `tmp` holds at least (last row + 1) * (largest rank)
    /// values, `tmp2` at least the product's width. By default, `lora` on each in turn.
    fn lora_batch(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        terms: &[(Rows, &crate::LoraAdapter<Self>, f32)],
        tmp: &mut Self::Buf,
        tmp2: &mut Self::Buf,
    ) {
        for &(rows, ad, scale) in terms {
            self.lora(out, x, rows, ad, scale, tmp, tmp2)
        }
    }
    // ---- the products a backward adds (training; every one ADDS into its output) ----

    /// out (t, w.rows()) = x (t, w.cols()) @ w^T (OVERWRITES, as `matmul`), the activations
    /// kept f32 whatever w's type (`matmul` may round them to the quantized kernels' int8
    /// blocks): the training forward through a quantized base (QLoRA), where the gradients need
    /// the same math as over the dequantized weights.
    fn matmul_f32act(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Matrix, t: usize);

    /// dx (t, w.cols()) += dy (t, w.rows()) @ w: the gradient through a frozen weight of any
    /// type `supports` accepts, read as `prepare` made it (a quantized base stays quantized).
    fn matmul_dx(&self, dx: &mut Self::Buf, dy: &Self::Buf, w: &Self::Matrix, t: usize);
    /// c (m, n) += a (t, m)^T @ b (t, n): a weight gradient, the sum over the batch's rows
    /// (values 0..m*n of `c`, 0..t*m of `a`, 0..t*n of `b`).
    fn gemm_tn(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        t: usize,
        m: usize,
        n: usize,
    );
    /// c (t, n) += a (t, k) @ b (k, n) (values 0..t*n of `c`, 0..t*k of `a`, 0..k*n of `b`).
    fn gemm_nn(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        t: usize,
        k: usize,
        n: usize,
    );
    /// c (t, n) += a (t, k) @ b (n, k)^T: an f32 matrix held in a buffer (an adapter's),
    /// applied as a weight is (values 0..t*n of `c`, 0..t*k of `a`, 0..n*k of `b`).
    fn gemm_nt(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        t: usize,
        k: usize,
        n: usize,
    );

    /// Rows 0..t of x (rows of `bias.len()`) += bias.
    fn add_bias(&self, x: &mut Self::Buf, bias: &Self::Buf, t: usize);
    /// In place on `rows` of x (rows of n_heads * head_dim); row `rows.start` is at position
    /// pos0.
    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: Rows,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    );
    /// x <- H_n x on every run of `n` values of `rows` (rows of `width`): the orthonormal
    /// Walsh-Hadamard rotation of a quantized KV cache's queries, keys, values and outputs.
    fn hadamard(&self, x: &mut Self::Buf, rows: Rows, width: usize, n: usize);
    /// Writes `rows` of `src` (rows of `width`) into the cache at positions pos.. (rounded to
    /// f16, or quantized, as the cache's type says).
    fn kv_store(&self, kv: &mut Self::Kv, pos: usize, src: &Self::Buf, rows: Rows, width: usize);
    /// Rows `rows` of out (width n_heads*head_dim) = softmax(q k^T * scale, causal [+ window])
    /// v over the same rows of q, `s.t == rows.len()`; GQA: query head h reads kv head h /
    /// (n_heads / n_kv_heads). `k`, `v`: the layer's cache, filled for positions 0..pos0+t.
    fn attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        rows: Rows,
        k: &Self::Kv,
        v: &Self::Kv,
        s: &AttnShape,
    );
    /// a = silu(a) * b, rows 0..t of `width`.
    fn silu_mul(&self, a: &mut Self::Buf, b: &Self::Buf, t: usize, width: usize);
    /// a += b, rows 0..t of `width`.
    fn add_assign(&self, a: &mut Self::Buf, b: &Self::Buf, t: usize, width: usize);
    /// Row `from` of x to row `to` (rows of `width`): gathers each sequence's last row.
    fn copy_row(&self, x: &mut Self::Buf, from: usize, to: usize, width: usize);
    /// Values 0..n of `src` into `dst`, both caches of the same type (a server slot reusing
    /// another's prompt prefix); nothing is copied between different types.
    fn kv_copy_prefix(dev: &Self::Device, dst: &mut Self::Kv, src: &Self::Kv, n: usize);
    /// Makes values 0..n of `src` readable on the host by `host_view`: the end of a step, and
    /// its one point of synchronisation. CPU: nothing to do; a device backend copies into
    /// `dst`.
    fn read_back(&self, src: &Self::Buf, n: usize, dst: &mut Self::Host);
    /// Values 0..n of `src` after `read_back` into `host`.
    fn host_view<'a>(src: &'a Self::Buf, host: &'a Self::Host, n: usize) -> &'a [f32];
    /// Calls `f` with values 0..n of `src` on the host (the debug probe; a device backend
    /// copies, and may allocate: not in the normal token loop).
    fn inspect(&self, src: &Self::Buf, n: usize, f: &mut dyn FnMut(&[f32]));
}
