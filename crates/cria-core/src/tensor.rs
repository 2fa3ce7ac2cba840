//! `Tensor`: a named, typed, shaped view of bytes that live either in a memory map (GGUF,
//! safetensors) or in an owned, 64-byte-aligned buffer (converted or permuted weights).
//!
//! Shapes are in GGML order: `ne[0]` is the innermost (contiguous) dimension. A weight matrix that
//! PyTorch calls `(out_features, in_features)` has `ne = [in_features, out_features]`: `cols()` is
//! `ne[0]`, `rows()` the product of the rest.

use crate::{quant, DType, Error, Result};
use std::sync::Arc;

/// 64-byte-aligned owned bytes (one cache line; enough for any SIMD load).
///
/// Not huge pages: weight copies in anonymous mappings advised for transparent huge pages
/// decoded 3-5% faster (fewer TLB walks), but in the side-by-side script their peak RSS at 2
/// threads came out 10-30% over file + KV for the SmolLM2 files (1.21-1.37, against 1.08-1.10
/// from the heap), in runs after llama-bench only, and not reproducibly when run alone.
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line, 64-byte aligned (a plain `[u8; 64]` is aligned to 1 only).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line([0u8; 64]); len.div_ceil(64)],
            len,
        }
    }
    pub fn from_slice(b: &[u8]) -> Self {
        let mut a = Self::zeroed(b.len());
        a.as_mut_slice().copy_from_slice(b);
        a
    }
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines)[..len]
    }
}

/// Where a tensor's bytes live.
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<AlignedBuf>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(b) => b.as_slice(),
        }
    }
    pub fn owned(b: AlignedBuf) -> Self {
        Bytes::Owned(Arc::new(b))
    }

    /// Tells the OS this range is read at random (a few rows at a time, as an embedding table):
    /// no read-ahead and no fault-around, so looking up one row maps one page, not the 64-128
    /// KiB around it. Without it, embedding a 512-token prompt pulls most of a 30 MiB table
    /// back into the process after `release_pages`. A hint only: failure changes nothing else.
    pub fn advise_random(&self) {
        if let Bytes::Mapped { map, offset, len } = self {
            let _ = map.advise_range(memmap2::Advice::Random, *offset, *len);
        }
    }

    /// Lets the OS drop this range's pages of a memory map from the process (whole pages inside
    /// the range only). For weights a backend has copied into its own layout: the mapped pages
    /// would otherwise stay resident beside the copy and double the footprint. The bytes stay
    /// readable: the next access reads them back from the file. Owned bytes: nothing to do.
    pub fn release_pages(&self) {
        if let Bytes::Mapped { map, offset, len } = self {
            let start = offset.div_ceil(PAGE) * PAGE;
            let end = (offset + len) / PAGE * PAGE;
            if end > start {
                dont_need(map, start, end - start);
            }
        }
    }
}

const PAGE: usize = 4096;

/// Drops from the process every page of `map` that holds no byte of the ranges `keep`
/// (`(start, end)` offsets; sorted here). `release_pages` keeps a range's partial first and
/// last pages, which a neighbour may still read; once a model is loaded, this releases those
/// too, together with the header's pages, sparing the pages the model still reads through the
/// map.
pub fn release_map_except(map: &memmap2::Mmap, keep: &mut [(usize, usize)]) {
    keep.sort_unstable();
    let mut cursor = 0;
    for &(start, end) in keep.iter() {
        let first = start / PAGE * PAGE;
        if first > cursor {
            dont_need(map, cursor, first - cursor);
        }
        cursor = cursor.max(end.div_ceil(PAGE) * PAGE);
    }
    if map.len() > cursor {
        dont_need(map, cursor, map.len() - cursor);
    }
}

/// MADV_DONTNEED on `len` bytes at page-aligned `start` of `map` (a hint: failure, e.g. a kernel
/// without madvise, only means the pages stay resident).
fn dont_need(map: &memmap2::Mmap, start: usize, len: usize) {
    debug_assert!(start % PAGE == 0 && start + len <= map.len().div_ceil(PAGE) * PAGE);
    // SAFETY: `map` is a read-only (`Mmap`, never written) file-backed mapping, so MADV_DONTNEED
    // only drops clean pages that are re-read from the file on the next access: no content
    // changes, and other views of the same bytes stay valid. Callers pass a page-aligned start
    // inside the mapping (which is page-granular, so the range's last page is in it).
    let _ = unsafe {
        map.unchecked_advise_range(
            memmap2::UncheckedAdvice::DontNeed,
            start,
            len.min(map.len() - start),
        )
    };
}

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    /// GGML order, innermost first; trailing 1s are kept as the file has them.
    pub ne: Vec<usize>,
    pub data: Bytes,
    /// A backend's own copy of the weights in a layout of its choosing (set by
    /// `Backend::prepare`, e.g. rows interleaved for a SIMD GEMM); None for a plain tensor. Only
    /// the backend that made it reads it (by downcasting); `data` stays the file's layout.
    pub prepared: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {} {:?})", self.name, self.dtype, self.ne)
    }
}

impl Tensor {
    /// Checks that `data` holds exactly the bytes `dtype` and `ne` call for.
    pub fn new(name: impl Into<String>, dtype: DType, ne: Vec<usize>, data: Bytes) -> Result<Self> {
        let name = name.into();
        let n = ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::msg(format!("tensor {name}: shape {ne:?} overflows")))?;
        if ne.first().is_some_and(|&c| c % dtype.block_size() != 0) {
            return Err(Error::msg(format!(
                "tensor {name}: row length {} is not a multiple of the {} block size {}",
                ne[0],
                dtype,
                dtype.block_size()
            )));
        }
        let want = dtype.bytes_for(n)?;
        let have = data.as_slice().len();
        if want != have {
            return Err(Error::msg(format!(
                "tensor {name}: {dtype} {ne:?} needs {want} bytes, have {have}"
            )));
        }
        Ok(Tensor {
            name,
            dtype,
            ne,
            data,
            prepared: None,
        })
    }
    /// An owned F32 tensor (tests, converted weights).
    pub fn from_f32(name: impl Into<String>, ne: Vec<usize>, v: &[f32]) -> Result<Self> {
        Self::new(
            name,
            DType::F32,
            ne,
            Bytes::owned(AlignedBuf::from_slice(bytemuck::cast_slice(v))),
        )
    }
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }
    pub fn n_elements(&self) -> usize {
        self.ne.iter().product()
    }
    pub fn cols(&self) -> usize {
        self.ne.first().copied().unwrap_or(1)
    }
    pub fn rows(&self) -> usize {
        self.ne.iter().skip(1).product()
    }
    pub fn row_bytes(&self) -> usize {
        self.cols() / self.dtype.block_size() * self.dtype.type_size()
    }
    /// Raw bytes of row `i` (in `dtype`'s block layout).
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[i * rb..(i + 1) * rb]
    }
    /// Dequantizes row `i` into `out` (len == cols()).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) -> Result<()> {
        quant::dequantize(self.dtype, self.row(i), out)
    }
    /// The whole tensor as f32 (row-major, GGML order).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.n_elements()];
        quant::dequantize(self.dtype, self.bytes(), &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBuf;

    /// 64-byte aligned, zeroed, exactly `len` long, and keeps what is written.
    #[test]
    fn aligned_buf_is_aligned_and_keeps_bytes() {
        for len in [0, 1, 63, 64, 65, 4096, 5 << 20] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().len(), len);
            assert!(
                b.as_slice().iter().all(|&x| x == 0),
                "len {len}: not zeroed"
            );
            assert_eq!(
                b.as_slice().as_ptr() as usize % 64,
                0,
                "len {len}: not aligned"
            );
            b.as_mut_slice().copy_from_slice(&src);
            assert_eq!(b.as_slice(), &src[..]);
            let c = AlignedBuf::from_slice(&src);
            assert_eq!(c.as_slice(), &src[..]);
            assert_eq!(c.as_slice().as_ptr() as usize % 64, 0);
        }
    }
}
