//! The forward's ops on the CPU: host memory throughout, each op the slice-level kernel of
//! cpu.rs on the rows it names.

use super::kv::{self, KvRows};
use super::CpuBackend;
use crate::{AttnShape, Backend, KvType, Rope, Rows};
use cria_core::{DType, Tensor};

impl Backend for CpuBackend {
    /// Host memory needs no handle.
    type Device = ();
    type Buf = Vec<f32>;
    /// Buffers are host memory: nothing to stage.
    type Host = ();
    type Kv = KvRows;
    /// The file's tensor, with the repacked copy `prepare` made in `Tensor::prepared`, if any.
    type Matrix = Tensor;

    fn name(&self) -> String {
        format!("cpu-{} x{}", self.isa, self.threads)
    }

    fn supports(&self, dtype: DType) -> bool {
        // matmul needs a kernel; embed dequantizes rows through cria-core.
        self.kernel(dtype).is_some() && cria_core::quant::can_dequantize(dtype)
    }

    fn device(&self) {}

    fn alloc(_: &(), n: usize) -> cria_core::Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn alloc_host(_: &(), _: usize) -> cria_core::Result<()> {
        Ok(())
    }

    fn alloc_kv(_: &(), ty: KvType, n: usize) -> cria_core::Result<KvRows> {
        Ok(KvRows::new(ty, n))
    }

    fn upload(&self, v: Vec<f32>) -> cria_core::Result<Vec<f32>> {
        Ok(v)
    }

    fn buf_len(b: &Vec<f32>) -> usize {
        b.len()
    }

    /// `CpuBackend::prepare`; when it made its own copy, the mapped pages of the original are
    /// released so the process holds the weights once, not twice.
    fn prepare(&self, w: Tensor) -> cria_core::Result<Tensor> {
        let t = CpuBackend::prepare(self, w)?;
        if t.prepared.is_some() {
            t.data.release_pages();
        }
        Ok(t)
    }

    /// The table as the file has it (`embed` reads a few rows per token: no read-ahead of the
    /// rest). Tied to a head the backend repacked, it shares that copy (`embed` reads rows from
    /// it), and the file's pages of the table are never touched again.
    fn prepare_embedding(
        &self,
        mut table: Tensor,
        head: Option<&Tensor>,
    ) -> cria_core::Result<Tensor> {
        table.data.advise_random();
        if let Some(h) = head {
            table.prepared = h.prepared.clone();
        }
        Ok(table)
    }

    fn mapped(w: &Tensor) -> Option<&Tensor> {
        w.prepared.is_none().then_some(w)
    }

    fn embed(&self, out: &mut Vec<f32>, rows: Rows, table: &Tensor, tokens: &[u32]) {
        CpuBackend::embed(self, &mut out[rows.values(table.cols())], table, tokens)
    }

    fn rmsnorm(&self, out: &mut Vec<f32>, x: &Vec<f32>, w: &Vec<f32>, eps: f32, t: usize) {
        let n = t * w.len();
        CpuBackend::rmsnorm(self, &mut out[..n], &x[..n], w, eps)
    }

    fn matmul(&self, out: &mut Vec<f32>, x: &Vec<f32>, w: &Tensor, t: usize) {
        CpuBackend::matmul(self, &mut out[..t * w.rows()], &x[..t * w.cols()], w, t)
    }

    fn matmul_many<const N: usize>(
        &self,
        outs: [&mut Vec<f32>; N],
        x: &Vec<f32>,
        ws: [&Tensor; N],
        t: usize,
    ) {
        let k = ws.first().map_or(0, |w| w.cols());
        let mut i = 0;
        let mut outs = outs.map(|o| {
            let n = t * ws[i].rows();
            i += 1;
            &mut o[..n]
        });
        CpuBackend::matmul_many(self, &mut outs, &x[..t * k], &ws, t)
    }

    fn matmul_rows(&self, out: &mut Vec<f32>, x: &Vec<f32>, rows: Rows, w: &Tensor) {
        let (o, xs) = (rows.values(w.rows()), rows.values(w.cols()));
        CpuBackend::matmul(self, &mut out[o], &x[xs], w, rows.len())
    }

    /// A as it is, B transposed (`cpu::lora`).
    fn prepare_lora(&self, a: Tensor, b: Tensor) -> cria_core::Result<(Tensor, Tensor)> {
        super::lora::prepare(self, a, b)
    }

    fn lora(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        rows: Rows,
        ad: &crate::LoraAdapter<Self>,
        scale: f32,
        tmp: &mut Vec<f32>,
        tmp2: &mut Vec<f32>,
    ) {
        let (n, r, m) = (rows.len(), ad.rank, ad.rows);
        if super::lora::packed(&ad.b).is_some() {
            let (o, xs) = (rows.values(m), rows.values(ad.cols));
            let term = (Rows::new(0, n), ad, scale);
            super::lora::lora(self, &mut out[o], &x[xs], &[term], &mut tmp[..n * r]);
            return;
        }
        // Without panels (CRIA_REPACK=0, or a type the kernels do not take): two matmuls and a
        // scaled add.
        // Down: (n, rank) = x (n, cols) @ a^T, all rows at once.
        let down = &mut tmp[..n * r];
        CpuBackend::matmul(self, down, &x[rows.values(ad.cols)], &ad.a, n);
        // Up, as many rows at a time as tmp2 holds, added scaled into out.
        let per = (tmp2.len() / m).max(1);
        let mut i = 0;
        while i < n {
            let k = per.min(n - i);
            let up = &mut tmp2[..k * m];
            CpuBackend::matmul(self, up, &down[i * r..(i + k) * r], &ad.b, k);
            let o0 = (rows.start + i) * m;
            out[o0..o0 + k * m]
                .iter_mut()
                .zip(up.iter())
                .for_each(|(o, u)| *o += scale * u);
            i += k;
        }
    }

    /// Every term's down projection in one pool job, then every up projection in another
    /// (`cpu::lora`), when each has the fast path's layout (else `lora` on each).
    fn lora_batch(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        terms: &[(Rows, &crate::LoraAdapter<Self>, f32)],
        tmp: &mut Vec<f32>,
        tmp2: &mut Vec<f32>,
    ) {
        const MAX: usize = super::lora::MAX_TERMS;
        let fast = terms.len() <= MAX
            && terms
                .iter()
                .all(|(_, ad, _)| super::lora::packed(&ad.b).is_some());
        if !fast {
            for &(rows, ad, scale) in terms {
                self.lora(out, x, rows, ad, scale, tmp, tmp2)
            }
            return;
        }
        super::lora::lora(self, out, x, terms, tmp)
    }

    fn matmul_f32act(&self, out: &mut Vec<f32>, x: &Vec<f32>, w: &Tensor, t: usize) {
        let (o, i) = (t * w.rows(), t * w.cols());
        CpuBackend::matmul_f32act(self, &mut out[..o], &x[..i], w, t)
    }

    fn matmul_dx(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, w: &Tensor, t: usize) {
        let (o, i) = (t * w.cols(), t * w.rows());
        CpuBackend::matmul_dx(self, &mut dx[..o], &dy[..i], w, t)
    }

    fn gemm_tn(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, t: usize, m: usize, n: usize) {
        CpuBackend::gemm_tn(self, &mut c[..m * n], &a[..t * m], &b[..t * n], t, m, n)
    }

    fn gemm_nn(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, t: usize, k: usize, n: usize) {
        CpuBackend::gemm_nn(self, &mut c[..t * n], &a[..t * k], &b[..k * n], t, k, n)
    }

    fn gemm_nt(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, t: usize, k: usize, n: usize) {
        CpuBackend::gemm_nt(self, &mut c[..t * n], &a[..t * k], &b[..n * k], t, k, n)
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, t: usize) {
        for row in x[..t * bias.len()].chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        rows: Rows,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        let xs = &mut x[rows.values(n_heads * head_dim)];
        CpuBackend::rope(self, xs, rows.len(), n_heads, head_dim, pos0, rope)
    }

    fn hadamard(&self, x: &mut Vec<f32>, rows: Rows, width: usize, n: usize) {
        kv::hadamard(&mut x[rows.values(width)], n)
    }

    fn kv_store(&self, kv: &mut KvRows, pos: usize, src: &Vec<f32>, rows: Rows, width: usize) {
        kv.store(pos * width, &src[rows.values(width)])
    }

    fn attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        rows: Rows,
        k: &KvRows,
        v: &KvRows,
        s: &AttnShape,
    ) {
        let qd = s.n_heads * s.head_dim;
        let n = k.len();
        let (kc, vc) = (k.slice(n), v.slice(n));
        let out = &mut out[rows.values(qd)];
        CpuBackend::attention(self, out, &q[rows.values(qd)], kc, vc, s)
    }

    fn silu_mul(&self, a: &mut Vec<f32>, b: &Vec<f32>, t: usize, width: usize) {
        CpuBackend::silu_mul(self, &mut a[..t * width], &b[..t * width])
    }

    fn add_assign(&self, a: &mut Vec<f32>, b: &Vec<f32>, t: usize, width: usize) {
        CpuBackend::add_assign(self, &mut a[..t * width], &b[..t * width])
    }

    fn copy_row(&self, x: &mut Vec<f32>, from: usize, to: usize, width: usize) {
        x.copy_within(from * width..(from + 1) * width, to * width);
    }

    fn kv_copy_prefix(_: &(), dst: &mut KvRows, src: &KvRows, n: usize) {
        dst.copy_prefix(src, n)
    }

    fn read_back(&self, _: &Vec<f32>, _: usize, _: &mut ()) {}

    fn host_view<'a>(src: &'a Vec<f32>, _: &'a (), n: usize) -> &'a [f32] {
        &src[..n]
    }

    fn inspect(&self, src: &Vec<f32>, n: usize, f: &mut dyn FnMut(&[f32])) {
        f(&src[..n])
    }
}
