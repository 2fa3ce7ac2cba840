//! GGUF v2/v3 reader over mmap (spec: ggml/docs/gguf.md).
//!
//! Layout: magic "GGUF", version u32, n_tensors u64, n_kv u64, then n_kv (key, type, value) triples,
//! then n_tensors tensor infos (name, n_dims u32, ne u64 * n_dims, type u32, offset u64), then
//! padding to `general.alignment` (default 32), then the tensor data; each offset is relative to the
//! start of the data section. Nothing is trusted: every count and length is checked against the
//! bytes that remain before anything is allocated, so a hostile file gets an error, not a panic or
//! a huge allocation. Split models (`name-00001-of-00003.gguf`, as llama.cpp's gguf-split writes
//! them) are opened as one.
//!
//! [`GgufWriter`] writes the same format (v3), optionally split the way gguf-split does.

use crate::tensor::{Bytes, Tensor};
use crate::{DType, Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Largest `general.alignment` accepted (ggml itself only ever writes 32).
pub const MAX_ALIGNMENT: usize = 1 << 20;
/// Metadata keys of split models (llama.cpp's LLM_KV_SPLIT_*).
pub const KEY_SPLIT_NO: &str = "split.no";
pub const KEY_SPLIT_COUNT: &str = "split.count";
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";
/// Preallocation cap for counts read from a file: a count is only an upper bound checked against
/// the file size, and one byte of file must not buy dozens of bytes of up-front allocation.
const PREALLOC_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Strings of an array in one buffer: a 128K-token vocabulary and its 280K merges cost their
/// bytes plus one offset each (~6 MB for LLaMA 3's), not a heap String each (~20 MB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StrArray {
    text: String,
    /// End of string i in `text` (start: the previous end, or 0).
    ends: Vec<usize>,
}

impl StrArray {
    pub fn with_capacity(n: usize) -> Self {
        StrArray {
            text: String::new(),
            ends: Vec::with_capacity(n),
        }
    }
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| &self[i])
    }
}

impl std::ops::Index<usize> for StrArray {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(s) => s,
            None => panic!("string {i} of an array of {}", self.len()),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    fn from_iter<I: IntoIterator<Item = S>>(it: I) -> Self {
        let mut a = StrArray::default();
        it.into_iter().for_each(|s| a.push(s.as_ref()));
        a
    }
}

impl<S: AsRef<str>> From<Vec<S>> for StrArray {
    fn from(v: Vec<S>) -> Self {
        v.into_iter().collect()
    }
}

/// Arrays are typed, so a 128K-entry vocabulary is one StrArray, not 128K enum values.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StrArray),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Integer arrays as i64 (token types, ids).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            _ => return None,
        })
    }
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            Array::F32(v) => Some(v.clone()),
            Array::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => self
                .to_i64()
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
    }
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// Short human form for `cria inspect` (arrays summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.len() > 80 => {
                let mut cut = 60;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{:?}... ({} bytes)", &s[..cut], s.len())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            v => v
                .as_i64()
                .map(|x| x.to_string())
                .unwrap_or_else(|| format!("{v:?}")),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v(x)
            }
        })*
    };
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool, String => String, Array => Array, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

macro_rules! array_from {
    ($($t:ty => $v:ident),*) => {
        $(impl From<Vec<$t>> for Array {
            fn from(x: Vec<$t>) -> Array {
                Array::$v(x)
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(x: Vec<$t>) -> Value {
                Value::Array(Array::$v(x))
            }
        })*
    };
}
array_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool, Array => Array, u64 => U64, i64 => I64, f64 => F64);

impl From<Vec<String>> for Array {
    fn from(x: Vec<String>) -> Array {
        Array::String(x.into())
    }
}
impl From<Vec<String>> for Value {
    fn from(x: Vec<String>) -> Value {
        Value::Array(x.into())
    }
}

impl Value {
    /// The GGUF type id of this value (gguf_type in ggml's gguf.h).
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

impl Array {
    /// The GGUF type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }
}

/// One opened GGUF model (all its split files).
pub struct GgufFile {
    /// The path it was opened with.
    pub path: PathBuf,
    pub version: u32,
    /// Key/value metadata in file order (of the first split, which holds all of it).
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// All tensors, in file order across the splits.
    pub tensors: Vec<Tensor>,
    tensor_index: HashMap<String, usize>,
    /// Total bytes of all mapped files.
    pub file_bytes: u64,
    /// Every file of the model (one, or each split in order).
    pub files: Vec<PathBuf>,
}

/// A bounds-checked cursor over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format {
            path: self.path.to_path_buf(),
            format: "GGUF",
            msg: format!("{} (at byte {})", msg.into(), self.pos),
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: need {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A count of items, each at least `min_item_bytes` long: refused if the rest of the file
    /// cannot possibly hold them (so no huge allocation is attempted).
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64()?;
        let fits = (n as u128) * (min_item_bytes.max(1) as u128) <= self.remaining() as u128;
        if !fits {
            return Err(self.err(format!("{what} count {n} is larger than the file can hold")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        Ok(self.str_lossy()?.into_owned())
    }
    fn str_lossy(&mut self) -> Result<std::borrow::Cow<'a, str>> {
        let n = self.count("string length", 1)?;
        let b = self.take(n)?;
        // The spec says UTF-8; a stray invalid byte is shown as U+FFFD rather than refusing the
        // whole model (the same leniency as gguf-py).
        Ok(String::from_utf8_lossy(b))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => Value::Array(self.array(depth)?),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
    fn array(&mut self, depth: usize) -> Result<Array> {
        if depth > 8 {
            return Err(self.err("arrays nested too deeply"));
        }
        let ty = self.u32()?;
        macro_rules! prim {
            ($variant:ident, $t:ty, $n:expr) => {{
                let n = self.count("array length", $n)?;
                let b = self.take(n * $n)?;
                Array::$variant(
                    b.chunks_exact($n)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            0 => prim!(U8, u8, 1),
            1 => prim!(I8, i8, 1),
            2 => prim!(U16, u16, 2),
            3 => prim!(I16, i16, 2),
            4 => prim!(U32, u32, 4),
            5 => prim!(I32, i32, 4),
            6 => prim!(F32, f32, 4),
            7 => {
                let n = self.count("array length", 1)?;
                let b = self.take(n)?;
                if let Some(bad) = b.iter().find(|&&x| x > 1) {
                    return Err(self.err(format!("bool array element {bad}")));
                }
                Array::Bool(b.iter().map(|&x| x == 1).collect())
            }
            8 => {
                let n = self.count("array length", 8)?;
                let mut v = StrArray::with_capacity(n.min(PREALLOC_MAX));
                for _ in 0..n {
                    v.push(&self.str_lossy()?);
                }
                Array::String(v)
            }
            9 => {
                let n = self.count("array length", 12)?;
                let mut v = Vec::with_capacity(n.min(PREALLOC_MAX));
                for _ in 0..n {
                    v.push(self.array(depth + 1)?);
                }
                Array::Array(v)
            }
            10 => prim!(U64, u64, 8),
            11 => prim!(I64, i64, 8),
            12 => prim!(F64, f64, 8),
            t => return Err(self.err(format!("unknown array element type {t}"))),
        })
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting the file while it is mapped would change the bytes under us (or SIGBUS); this is
    // the same contract llama.cpp and every mmap-based loader accept for model files.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(Arc::new(map))
}

fn parse(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Parsed> {
    let mut c = Cursor {
        buf: &map[..],
        pos: 0,
        path,
    };
    let magic = c.take(4).map_err(|_| c.err("file too short to be GGUF"))?;
    if magic != MAGIC {
        return Err(Error::Format {
            path: path.to_path_buf(),
            format: "GGUF",
            msg: format!("bad magic {magic:02x?}, expected \"GGUF\""),
        });
    }
    let version = c.u32()?;
    if version == 1 {
        return Err(Error::Unsupported(format!(
            "{}: GGUF version 1 (re-convert the model with a current llama.cpp)",
            path.display()
        )));
    }
    if version & 0xFFFF == 0 && version != 0 {
        // ggml's own test: a byte-swapped small version number.
        return Err(c.err(format!(
            "version {version:#x} looks byte-swapped: big-endian GGUF is not supported"
        )));
    }
    if !(2..=3).contains(&version) {
        return Err(c.err(format!("unknown GGUF version {version}")));
    }
    // Smallest possible tensor info: name len 8 (+0 bytes), n_dims 4, one dim 8, type 4, offset 8.
    let n_tensors = c.count("tensor", 8 + 4 + 8 + 4 + 8)?;
    let n_kv = c.count("metadata", 8 + 4 + 1)?;
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv.min(PREALLOC_MAX));
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        if !keys.insert(key.clone()) {
            return Err(c.err(format!("duplicate metadata key {key}")));
        }
        let ty = c.u32()?;
        let v = c.value(ty, 0).map_err(|e| match e {
            Error::Format { path, format, msg } => Error::Format {
                path,
                format,
                msg: format!("metadata {key}: {msg}"),
            },
            e => e,
        })?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= MAX_ALIGNMENT as u64 => a as usize,
            _ => {
                return Err(c.err(format!(
                    "general.alignment {v:?} is not a power of two up to {MAX_ALIGNMENT}"
                )))
            }
        },
    };
    let mut infos = Vec::with_capacity(n_tensors.min(PREALLOC_MAX));
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(format!(
                "tensor {name}: {n_dims} dimensions (1..={MAX_DIMS} allowed)"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64()?;
            if d > i64::MAX as u64 {
                return Err(c.err(format!("tensor {name}: dimension {d}")));
            }
            ne.push(usize::try_from(d).map_err(|_| {
                c.err(format!(
                    "tensor {name}: dimension {d} does not fit in memory"
                ))
            })?);
        }
        let ty = c.u32()?;
        let dtype = DType::from_ggml(ty).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor {name} has unknown type id {ty}",
                path.display()
            ))
        })?;
        let offset = c.u64()?;
        infos.push((name, ne, dtype, offset));
    }
    // The data section starts at the next multiple of the alignment (it may be past the end of
    // a file with no tensor data; then any tensor with bytes fails the range check below).
    let data_start = c.pos.div_ceil(alignment).saturating_mul(alignment);
    let data_len = map.len().saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::new();
    for (name, ne, dtype, offset) in infos {
        if !seen.insert(name.clone()) {
            return Err(c.err(format!("duplicate tensor name {name}")));
        }
        let n = ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| c.err(format!("tensor {name}: shape {ne:?} overflows")))?;
        let nbytes = dtype
            .bytes_for(n)
            .map_err(|e| c.err(format!("tensor {name}: {e}")))?;
        if offset % alignment as u64 != 0 {
            return Err(c.err(format!(
                "tensor {name}: offset {offset} not aligned to {alignment}"
            )));
        }
        let in_file =
            matches!(offset.checked_add(nbytes as u64), Some(end) if end <= data_len as u64);
        if !in_file {
            return Err(c.err(format!("tensor {name}: data [{offset}, +{nbytes}) runs past the end of the file (data section is {data_len} bytes)")));
        }
        let data = Bytes::Mapped {
            map: map.clone(),
            offset: data_start + offset as usize,
            len: nbytes,
        };
        tensors.push(Tensor::new(name, dtype, ne, data).map_err(|e| c.err(e.to_string()))?);
    }
    // The header is parsed into owned values: its pages (a vocabulary's strings, ~2 MB for a
    // 49K-token model) need not stay in the process.
    Bytes::Mapped {
        map: map.clone(),
        offset: 0,
        len: data_start.min(map.len()),
    }
    .release_pages();
    Ok(Parsed {
        version,
        metadata,
        tensors,
    })
}

/// `foo-00001-of-00003.gguf` -> Some(("foo", 1, 3)).
fn split_pattern(path: &Path) -> Option<(String, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, idx) = head.rsplit_once('-')?;
    if idx.len() != 5
        || count.len() != 5
        || !idx.bytes().chain(count.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((prefix.to_string(), idx.parse().ok()?, count.parse().ok()?))
}

/// The file name llama.cpp gives split `i` (0-based) of `n`: `PREFIX-0000{i+1}-of-0000{n}.gguf`.
pub fn split_path(prefix: &Path, i: usize, n: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!("-{:05}-of-{:05}.gguf", i + 1, n));
    PathBuf::from(s)
}

fn meta_u64(m: &[(String, Value)], key: &str) -> Option<u64> {
    m.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_u64())
}

impl GgufFile {
    /// Opens a GGUF file. If its metadata says it is one of N splits (`split.count`), all N files
    /// (`PREFIX-0000i-of-0000N.gguf`, beside it) are opened as one model, whichever split was named.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let given = parse(path, map_file(path)?)?;
        let split_count = meta_u64(&given.metadata, KEY_SPLIT_COUNT).unwrap_or(1);
        let mut file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if split_count <= 1 {
            return Self::assemble(
                path,
                given.version,
                given.metadata,
                given.tensors,
                file_bytes,
                vec![path.to_path_buf()],
            );
        }
        let split_err = |msg: String| Error::Format {
            path: path.to_path_buf(),
            format: "GGUF",
            msg,
        };
        let (prefix, _, count) = split_pattern(path).ok_or_else(|| {
            split_err(format!(
                "split.count = {split_count} but the file name is not PREFIX-0000i-of-0000N.gguf"
            ))
        })?;
        if count as u64 != split_count {
            return Err(split_err(format!(
                "split.count = {split_count} but the file name says {count}"
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let prefix = dir.join(prefix);
        let mut parts = Vec::with_capacity(count.min(PREALLOC_MAX));
        let mut files = Vec::with_capacity(count.min(PREALLOC_MAX));
        let mut given = Some(given);
        file_bytes = 0;
        for i in 0..count {
            let p = split_path(&prefix, i, count);
            let part = if given.is_some() && same_file(&p, path) {
                given.take().unwrap()
            } else {
                if !p.exists() {
                    return Err(Error::msg(format!(
                        "{}: split {} of {count} is missing: {}",
                        path.display(),
                        i + 1,
                        p.display()
                    )));
                }
                parse(&p, map_file(&p)?)?
            };
            let no = meta_u64(&part.metadata, KEY_SPLIT_NO);
            if no.is_some_and(|no| no != i as u64) {
                return Err(Error::Format {
                    path: p,
                    format: "GGUF",
                    msg: format!(
                        "split.no = {} in split file {} of {count}",
                        no.unwrap(),
                        i + 1
                    ),
                });
            }
            if meta_u64(&part.metadata, KEY_SPLIT_COUNT) != Some(split_count) {
                return Err(Error::Format {
                    path: p,
                    format: "GGUF",
                    msg: format!("split.count differs from the first split's {split_count}"),
                });
            }
            file_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            files.push(p);
            parts.push(part);
        }
        let mut parts = parts.into_iter();
        let first = parts.next().expect("count >= 2");
        let mut tensors = first.tensors;
        for part in parts {
            tensors.extend(part.tensors);
        }
        if let Some(want) = meta_u64(&first.metadata, KEY_SPLIT_TENSORS_COUNT) {
            if want != tensors.len() as u64 {
                return Err(split_err(format!(
                    "split.tensors.count = {want} but the {count} splits hold {} tensors",
                    tensors.len()
                )));
            }
        }
        Self::assemble(
            path,
            first.version,
            first.metadata,
            tensors,
            file_bytes,
            files,
        )
    }

    fn assemble(
        path: &Path,
        version: u32,
        metadata: Vec<(String, Value)>,
        tensors: Vec<Tensor>,
        file_bytes: u64,
        files: Vec<PathBuf>,
    ) -> Result<Self> {
        let index = metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    format: "GGUF",
                    msg: format!("tensor {} appears in more than one split", t.name),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            file_bytes,
            files,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key).and_then(Value::as_array)
    }
    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// Removes a metadata key, returning its value (e.g. the vocabulary arrays, once a tokenizer
    /// has been built from them: ~2 MB for a 49K-token model, ~6 MB for a 128K one).
    pub fn remove_metadata(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, v) = self.metadata.remove(i);
        for j in self.index.values_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        Some(v)
    }

    /// Drops from the process the pages of every file's map outside the byte ranges of `read`
    /// (the tensors still read through the map): see `tensor::release_map_except`.
    pub fn release_pages_except(&self, read: &[&Tensor]) {
        let mut maps: Vec<&Arc<memmap2::Mmap>> = Vec::new();
        for t in &self.tensors {
            if let Bytes::Mapped { map, .. } = &t.data {
                if !maps.iter().any(|m| Arc::ptr_eq(m, map)) {
                    maps.push(map);
                }
            }
        }
        for map in maps {
            let mut keep: Vec<(usize, usize)> = read
                .iter()
                .filter_map(|t| match &t.data {
                    Bytes::Mapped {
                        map: m,
                        offset,
                        len,
                    } if Arc::ptr_eq(m, map) => Some((*offset, offset + len)),
                    _ => None,
                })
                .collect();
            crate::tensor::release_map_except(map, &mut keep);
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

struct WTensor<'a> {
    name: String,
    dtype: DType,
    ne: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file: metadata in insertion order, then tensors in insertion order, each
/// tensor's data padded to the alignment (32 unless `general.alignment` says otherwise), as ggml's
/// gguf writer lays it out. Tensor bytes can be borrowed (e.g. from an opened model) or owned.
///
/// ```no_run
/// # use cria_core::{gguf::{GgufWriter, Value}, DType};
/// let mut w = GgufWriter::new();
/// w.add("general.architecture", "llama");
/// w.add("llama.block_count", 30u32);
/// w.add_tensor("output_norm.weight", DType::F32, vec![4], bytemuck::cast_slice(&[1f32; 4]).to_vec()).unwrap();
/// w.write("model.gguf").unwrap();
/// ```
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<WTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies an opened model's metadata (less any split.* keys) and borrows its tensors.
    pub fn from_gguf(g: &'a GgufFile) -> Self {
        let mut w = Self::new();
        for (k, v) in &g.metadata {
            if !k.starts_with("split.") {
                w.add(k.clone(), v.clone());
            }
        }
        for t in &g.tensors {
            w.tensors.push(WTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                ne: t.ne.clone(),
                data: Cow::Borrowed(t.bytes()),
            });
        }
        w
    }

    /// Sets a metadata key; a key already present keeps its place and takes the new value.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Removes a metadata key if present.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Sets `general.alignment` (a power of two up to [`MAX_ALIGNMENT`]).
    pub fn set_alignment(&mut self, alignment: usize) -> Result<&mut Self> {
        if !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(Error::msg(format!(
                "GGUF alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}"
            )));
        }
        Ok(self.add("general.alignment", alignment as u32))
    }

    fn alignment(&self) -> Result<usize> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT as u64 => Ok(a as usize),
                _ => Err(Error::msg(format!(
                    "general.alignment {v:?} is not a power of two up to {MAX_ALIGNMENT}"
                ))),
            },
        }
    }

    /// Adds a tensor (`ne` in GGML order); checks that `data` is exactly the bytes `dtype` and
    /// `ne` call for and that the name is new.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        ne: Vec<usize>,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self> {
        let (name, data) = (name.into(), data.into());
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(Error::msg(format!(
                "tensor {name}: {} dimensions (1..={MAX_DIMS} allowed)",
                ne.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::msg(format!("tensor {name} added twice")));
        }
        if ne[0] % dtype.block_size() != 0 {
            return Err(Error::msg(format!(
                "tensor {name}: row length {} is not a multiple of the {dtype} block size {}",
                ne[0],
                dtype.block_size()
            )));
        }
        let n = ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::msg(format!("tensor {name}: shape {ne:?} overflows")))?;
        let want = dtype.bytes_for(n)?;
        if data.len() != want {
            return Err(Error::msg(format!(
                "tensor {name}: {dtype} {ne:?} needs {want} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(WTensor {
            name,
            dtype,
            ne,
            data,
        });
        Ok(self)
    }

    /// Adds an existing tensor, borrowing its bytes.
    pub fn add_tensor_ref(&mut self, t: &'a Tensor) -> Result<&mut Self> {
        self.add_tensor(t.name.clone(), t.dtype, t.ne.clone(), t.bytes())
    }

    /// Writes one file. It is written to `PATH.partial` and renamed at the end, so a failed write
    /// never leaves a truncated model under the real name.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        write_file(path.as_ref(), &metadata, &self.tensors, self.alignment()?)
    }

    /// Writes the model as `n_files` splits named like llama.cpp's gguf-split does
    /// (`PREFIX-00001-of-0000N.gguf`, ...) and returns their paths. Tensors are dealt out in
    /// order, as evenly by count as possible. The first split carries all the metadata; every
    /// split carries `split.no` (u16, 0-based), `split.count` (u16) and `split.tensors.count`
    /// (i32, the total), plus `general.alignment` when it is not the default.
    pub fn write_split(&self, prefix: impl AsRef<Path>, n_files: usize) -> Result<Vec<PathBuf>> {
        let n = self.tensors.len();
        if n_files == 0 || n_files > n.max(1) {
            return Err(Error::msg(format!(
                "cannot split {n} tensors into {n_files} files (each split needs a tensor)"
            )));
        }
        let groups = (0..n_files)
            .map(|i| i * n / n_files..(i + 1) * n / n_files)
            .collect();
        self.write_groups(prefix.as_ref(), groups)
    }

    /// Splits as `gguf-split --split-max-tensors N` and gguf-py's `split_max_tensors` do: runs of
    /// `max_tensors` tensors in order, the last one shorter. Same metadata as [`Self::write_split`].
    pub fn write_split_max_tensors(
        &self,
        prefix: impl AsRef<Path>,
        max_tensors: usize,
    ) -> Result<Vec<PathBuf>> {
        if max_tensors == 0 {
            return Err(Error::msg("split_max_tensors must be at least 1"));
        }
        let n = self.tensors.len();
        let groups = if n == 0 {
            std::iter::once(0..0).collect()
        } else {
            (0..n)
                .step_by(max_tensors)
                .map(|lo| lo..(lo + max_tensors).min(n))
                .collect()
        };
        self.write_groups(prefix.as_ref(), groups)
    }

    fn write_groups(
        &self,
        prefix: &Path,
        groups: Vec<std::ops::Range<usize>>,
    ) -> Result<Vec<PathBuf>> {
        let n_files = groups.len();
        if n_files > u16::MAX as usize {
            return Err(Error::msg(format!(
                "{n_files} splits: split.count is a u16"
            )));
        }
        let n_tensors = i32::try_from(self.tensors.len())
            .map_err(|_| Error::msg("too many tensors for split.tensors.count (i32)"))?;
        let alignment = self.alignment()?;
        let count_v = Value::U16(n_files as u16);
        let total_v = Value::I32(n_tensors);
        let align_v = Value::U32(alignment as u32);
        let mut paths = Vec::with_capacity(n_files);
        for (i, range) in groups.into_iter().enumerate() {
            let no_v = Value::U16(i as u16);
            let mut metadata: Vec<(&str, &Value)> = Vec::new();
            if i == 0 {
                metadata.extend(
                    self.metadata
                        .iter()
                        .filter(|(k, _)| !k.starts_with("split."))
                        .map(|(k, v)| (k.as_str(), v)),
                );
            } else if alignment != DEFAULT_ALIGNMENT {
                metadata.push(("general.alignment", &align_v));
            }
            metadata.push((KEY_SPLIT_NO, &no_v));
            metadata.push((KEY_SPLIT_COUNT, &count_v));
            metadata.push((KEY_SPLIT_TENSORS_COUNT, &total_v));
            let p = split_path(prefix, i, n_files);
            write_file(&p, &metadata, &self.tensors[range], alignment)?;
            paths.push(p);
        }
        Ok(paths)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! prim {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => prim!(v),
        Array::U16(v) => prim!(v),
        Array::I16(v) => prim!(v),
        Array::U32(v) => prim!(v),
        Array::I32(v) => prim!(v),
        Array::F32(v) => prim!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => prim!(v),
        Array::I64(v) => prim!(v),
        Array::F64(v) => prim!(v),
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn array_depth(a: &Array) -> usize {
    match a {
        Array::Array(v) => 1 + v.iter().map(array_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn write_file(
    path: &Path,
    metadata: &[(&str, &Value)],
    tensors: &[WTensor],
    alignment: usize,
) -> Result<()> {
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            dtype: t.dtype,
            ne: t.ne.clone(),
        })
        .collect();
    let mut w = GgufStreamWriter::create(path, metadata, &infos, alignment)?;
    for t in tensors {
        w.write_tensor(&t.data)?;
    }
    w.finish()
}

/// One tensor's entry in a GGUF header: its name, element type and shape (`ne`, GGML order).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub ne: Vec<usize>,
}

impl TensorInfo {
    /// Bytes of the tensor's data (checked: no overflow, whole blocks per row).
    pub fn n_bytes(&self) -> Result<usize> {
        if self.ne.is_empty() || self.ne.len() > MAX_DIMS {
            return Err(Error::msg(format!(
                "tensor {}: {} dimensions (1..={MAX_DIMS} allowed)",
                self.name,
                self.ne.len()
            )));
        }
        if self.ne[0] % self.dtype.block_size() != 0 {
            return Err(Error::msg(format!(
                "tensor {}: row length {} is not a multiple of the {} block size {}",
                self.name,
                self.ne[0],
                self.dtype,
                self.dtype.block_size()
            )));
        }
        let n = self
            .ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::msg(format!(
                    "tensor {}: shape {:?} overflows",
                    self.name, self.ne
                ))
            })?;
        self.dtype.bytes_for(n)
    }
}

/// Writes a GGUF v3 file one tensor at a time, so a model never needs to be in memory whole
/// (`cria quantize`, `cria convert`): the header (metadata and every tensor's name, type, shape
/// and offset) goes first, then [`Self::write_tensor`] is called once per tensor in header order
/// with exactly its bytes, then [`Self::finish`]. The file is written as `PATH.partial` and
/// renamed to `PATH` by `finish`; an error, or dropping the writer unfinished, removes the
/// partial file, so no half-written model is ever left under either name.
pub struct GgufStreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    sizes: Vec<usize>,
    next: usize,
    alignment: usize,
}

impl GgufStreamWriter {
    /// Creates `PATH.partial` and writes the header. `alignment` is a power of two up to
    /// [`MAX_ALIGNMENT`] (it must agree with any `general.alignment` in `metadata`).
    pub fn create(
        path: &Path,
        metadata: &[(&str, &Value)],
        tensors: &[TensorInfo],
        alignment: usize,
    ) -> Result<Self> {
        if !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(Error::msg(format!(
                "GGUF alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}"
            )));
        }
        // The header is built in memory (it is small next to the tensors), the data streamed.
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            if let Value::Array(a) = v {
                // The reader refuses deeper nesting; refuse to write what cria could not read back.
                if array_depth(a) > 8 {
                    return Err(Error::msg(format!(
                        "metadata {k}: arrays nested more than 9 deep"
                    )));
                }
            }
            put_str(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v);
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut seen = std::collections::HashSet::new();
        for t in tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(Error::msg(format!("tensor {} added twice", t.name)));
            }
            let n = t.n_bytes()?;
            sizes.push(n);
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for &d in &t.ne {
                h.extend_from_slice(&(d as u64).to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset += (n as u64).div_ceil(alignment as u64) * alignment as u64;
        }
        h.resize(h.len().div_ceil(alignment) * alignment, 0);

        let tmp = {
            let mut s = path.as_os_str().to_owned();
            s.push(".partial");
            PathBuf::from(s)
        };
        let f = std::fs::File::create(&tmp).map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        let mut w = Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(std::io::BufWriter::with_capacity(1 << 20, f)),
            sizes,
            next: 0,
            alignment,
        };
        w.io(|o| o.write_all(&h))?;
        Ok(w)
    }

    /// Runs one write; on error the partial file is closed and removed.
    fn io(
        &mut self,
        f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
    ) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(Error::msg(format!(
                "{}: the writer already failed or finished",
                self.path.display()
            )));
        };
        f(out).map_err(|source| {
            self.abandon();
            Error::Io {
                path: self.tmp.clone(),
                source,
            }
        })
    }

    fn abandon(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    /// Index of the tensor the next [`Self::write_tensor`] call writes.
    pub fn next_tensor(&self) -> usize {
        self.next
    }

    /// Writes the next tensor's data: exactly the byte count its header entry calls for.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some(&want) = self.sizes.get(self.next) else {
            self.abandon();
            return Err(Error::msg(format!(
                "{}: more tensors written than the header lists ({})",
                self.path.display(),
                self.sizes.len()
            )));
        };
        if data.len() != want {
            self.abandon();
            return Err(Error::msg(format!(
                "{}: tensor {} has {} bytes, its header entry says {want}",
                self.path.display(),
                self.next,
                data.len()
            )));
        }
        let pad = want.div_ceil(self.alignment) * self.alignment - want;
        self.io(|o| {
            o.write_all(data)?;
            o.write_all(&[0u8; 64][..pad.min(64)])?;
            // Alignments above 64 bytes: the rest of the padding.
            for _ in 0..pad.saturating_sub(64) {
                o.write_all(&[0])?;
            }
            Ok(())
        })?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, flushes to disk and renames `PATH.partial` to `PATH`.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.sizes.len() {
            self.abandon();
            return Err(Error::msg(format!(
                "{}: {} of {} tensors written",
                self.path.display(),
                self.next,
                self.sizes.len()
            )));
        }
        let Some(out) = self.out.take() else {
            return Err(Error::msg(format!(
                "{}: the writer already failed",
                self.path.display()
            )));
        };
        let synced = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(source) = synced {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::Io {
                path: self.tmp.clone(),
                source,
            });
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::Io {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl Drop for GgufStreamWriter {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn split_names() {
        assert_eq!(
            split_pattern(Path::new("/a/m-00001-of-00003.gguf")),
            Some(("m".into(), 1, 3))
        );
        assert_eq!(
            split_pattern(Path::new("llama-3-8b-q4-00002-of-00010.gguf")),
            Some(("llama-3-8b-q4".into(), 2, 10))
        );
        assert_eq!(split_pattern(Path::new("m.gguf")), None);
        assert_eq!(split_pattern(Path::new("m-0000x-of-00002.gguf")), None);
        assert_eq!(
            split_path(Path::new("/a/m"), 1, 3),
            PathBuf::from("/a/m-00002-of-00003.gguf")
        );
    }
}
