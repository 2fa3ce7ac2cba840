//! GGUF v2/v3 reader over mmap (spec: ggml/docs/gguf.md).
//!
//! Layout: magic "GGUF", version u32, n_tensors u64, n_kv u64, then n_kv (key, type, value) triples,
//! then n_tensors tensor infos (name, n_dims u32, ne u64 * n_dims, type u32, offset u64), then
//! padding to `general.alignment` (default 32), then the tensor data; each offset is relative to the
//! start of the data section. Nothing is trusted: every count and length is checked against the
//! bytes that remain before anything is allocated, so a hostile file gets an error, not a panic or
//! a huge allocation. Split models (`name-00001-of-00003.gguf`) are opened as one.

use crate::tensor::{Bytes, Tensor};
use crate::{DType, Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

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

/// Arrays are typed, so a 128K-entry vocabulary is one Vec<String>, not 128K enum values.
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
    String(Vec<String>),
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
            _ => self.to_i64().map(|v| v.into_iter().map(|x| x as f32).collect()),
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
            Value::String(s) if s.len() > 80 => format!("{:?}... ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            v => v.as_i64().map(|x| x.to_string()).unwrap_or_else(|| format!("{v:?}")),
        }
    }
}

/// One opened GGUF model (all its split files).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Key/value metadata in file order (of the first split).
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<Tensor>,
    tensor_index: HashMap<String, usize>,
    /// Total bytes of all mapped files.
    pub file_bytes: u64,
}

/// A bounds-checked cursor over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format { path: self.path.to_path_buf(), format: "GGUF", msg: format!("{} (at byte {})", msg.into(), self.pos) }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated: need {n} bytes, {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
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
        let n = self.count("string length", 1)?;
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        })
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
                Array::$variant(b.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
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
                Array::Bool(self.take(n)?.iter().map(|&b| b != 0).collect())
            }
            8 => {
                let n = self.count("array length", 8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Array::String(v)
            }
            9 => {
                let n = self.count("array length", 12)?;
                let mut v = Vec::with_capacity(n);
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
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting the file while it is mapped would change the bytes under us (or SIGBUS); this is
    // the same contract llama.cpp and every mmap-based loader accept for model files.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(Arc::new(map))
}

fn parse(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Parsed> {
    let mut c = Cursor { buf: &map[..], pos: 0, path };
    let magic = c.take(4).map_err(|_| c.err("file too short to be GGUF"))?;
    if magic != MAGIC {
        if magic == b"FUGG" {
            return Err(c.err("big-endian GGUF is not supported"));
        }
        return Err(Error::Format { path: path.to_path_buf(), format: "GGUF", msg: format!("bad magic {magic:02x?}, expected \"GGUF\"") });
    }
    let version = c.u32()?;
    if version == 1 {
        return Err(Error::Unsupported(format!("{}: GGUF version 1 (re-convert the model with a current llama.cpp)", path.display())));
    }
    if !(2..=3).contains(&version) {
        return Err(c.err(format!("unknown GGUF version {version}")));
    }
    // Smallest possible tensor info: name len 8 + 1 byte, n_dims 4, one dim 8, type 4, offset 8.
    let n_tensors = c.count("tensor", 8 + 4 + 8 + 4 + 8)?;
    let n_kv = c.count("metadata", 8 + 4 + 1)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty, 0)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
        },
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(format!("tensor {name}: {n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64()?;
            if d > i64::MAX as u64 {
                return Err(c.err(format!("tensor {name}: dimension {d}")));
            }
            ne.push(d as usize);
        }
        let ty = c.u32()?;
        let dtype = DType::from_ggml(ty).ok_or_else(|| Error::Unsupported(format!("{}: tensor {name} has unknown type id {ty}", path.display())))?;
        let offset = c.u64()?;
        infos.push((name, ne, dtype, offset));
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let data_len = map.len().saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::HashSet::new();
    for (name, ne, dtype, offset) in infos {
        if !seen.insert(name.clone()) {
            return Err(c.err(format!("duplicate tensor name {name}")));
        }
        let n = ne.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| c.err(format!("tensor {name}: shape {ne:?} overflows")))?;
        let nbytes = dtype.bytes_for(n).map_err(|e| c.err(format!("tensor {name}: {e}")))?;
        if offset % alignment as u64 != 0 {
            return Err(c.err(format!("tensor {name}: offset {offset} not aligned to {alignment}")));
        }
        let end = offset.checked_add(nbytes as u64).filter(|&e| e <= data_len as u64).ok_or_else(|| c.err(format!("tensor {name}: data [{offset}, +{nbytes}) runs past the end of the file (data section is {data_len} bytes)")))?;
        let _ = end;
        let data = Bytes::Mapped { map: map.clone(), offset: data_start + offset as usize, len: nbytes };
        tensors.push(Tensor::new(name, dtype, ne, data).map_err(|e| c.err(e.to_string()))?);
    }
    Ok(Parsed { version, metadata, tensors })
}

/// `foo-00001-of-00003.gguf` -> Some(("foo", 3)).
fn split_pattern(path: &Path) -> Option<(String, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, idx) = head.rsplit_once('-')?;
    if idx.len() != 5 || count.len() != 5 {
        return None;
    }
    let count: usize = count.parse().ok()?;
    let _: usize = idx.parse().ok()?;
    Some((prefix.to_string(), count))
}

impl GgufFile {
    /// Opens a GGUF file; if its name is `X-0000i-of-0000N.gguf`, opens all N splits as one model.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let first = parse(path, map_file(path)?)?;
        let split_count = first.metadata.iter().find(|(k, _)| k == "split.count").and_then(|(_, v)| v.as_u64()).unwrap_or(1) as usize;
        let mut tensors = first.tensors;
        let mut file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if split_count > 1 {
            let (prefix, count) = split_pattern(path).ok_or_else(|| Error::msg(format!("{}: split.count = {split_count} but the file name is not NAME-0000i-of-0000N.gguf", path.display())))?;
            if count != split_count {
                return Err(Error::msg(format!("{}: split.count = {split_count} but the file name says {count}", path.display())));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            tensors.clear();
            for i in 1..=count {
                let p = dir.join(format!("{prefix}-{i:05}-of-{count:05}.gguf"));
                let part = if p == path { parse(&p, map_file(&p)?)? } else { parse(&p, map_file(&p).map_err(|e| Error::msg(format!("missing split {i} of {count}: {e}")))?)? };
                file_bytes += if p == path { 0 } else { std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) };
                tensors.extend(part.tensors);
            }
        }
        let index = first.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let mut tensor_index = HashMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(Error::msg(format!("{}: tensor {} appears in more than one split", path.display(), t.name)));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), version: first.version, metadata: first.metadata, index, tensors, tensor_index, file_bytes })
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
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn split_names() {
        assert_eq!(split_pattern(Path::new("/a/m-00001-of-00003.gguf")), Some(("m".into(), 3)));
        assert_eq!(split_pattern(Path::new("llama-3-8b-q4-00002-of-00010.gguf")), Some(("llama-3-8b-q4".into(), 10)));
        assert_eq!(split_pattern(Path::new("m.gguf")), None);
    }
}
