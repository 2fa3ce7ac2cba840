//! Hugging Face safetensors over mmap: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, or every `*.safetensors` in a folder.
//!
//! File layout: u64 LE header length N, N bytes of JSON `{name: {dtype, shape, data_offsets:
//! [begin, end]}, "__metadata__": {...}}`, then the data; offsets are relative to the end of the
//! header. Shapes are PyTorch order (outermost first); `Tensor::ne` is GGML order, so they are
//! reversed here. Every offset and size is checked against the file before a view is made.

use crate::tensor::{Bytes, Tensor};
use crate::{DType, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Headers larger than this are refused (the format's own reference implementation caps at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Every F32/F16/BF16 tensor of a safetensors model, as mapped views.
///
/// Shapes are converted to GGML order: `Tensor::ne` is the safetensors (PyTorch) shape reversed,
/// so a Linear weight stored as `[out_features, in_features]` has `ne = [in_features,
/// out_features]` (`cols()` = in_features). A 0-d scalar gets `ne = [1]`.
pub struct SafetensorsModel {
    pub tensors: Vec<Tensor>,
    /// Tensors present in the files whose dtype cria does not load: (name, dtype).
    pub skipped: Vec<(String, String)>,
    pub files: Vec<PathBuf>,
    /// The map of each file, parallel to `files`.
    maps: Vec<Arc<memmap2::Mmap>>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        format: "safetensors",
        msg: msg.into(),
    }
}

fn dtype_of(s: &str) -> Option<DType> {
    match s {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

fn elem_size(s: &str) -> Option<usize> {
    Some(match s {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsModel {
    pub fn open_folder(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let mut index_map: Option<Vec<(String, String)>> = None;
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format_err(&index, e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| format_err(&index, "no weight_map object"))?;
            let mut names: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f
                    .as_str()
                    .ok_or_else(|| format_err(&index, "weight_map value is not a string"))?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(format_err(
                        &index,
                        format!("shard name {f:?} points outside the folder"),
                    ));
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            index_map = Some(
                map.iter()
                    .map(|(t, f)| (t.clone(), f.as_str().unwrap_or_default().to_string()))
                    .collect::<Vec<_>>(),
            );
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            return Err(Error::msg(format!(
                "{}: no *.safetensors weights in this folder",
                dir.display()
            )));
        }
        let mut m = SafetensorsModel {
            tensors: vec![],
            skipped: vec![],
            files: vec![],
            maps: vec![],
        };
        for f in &files {
            m.add_file(f)?;
        }
        let mut names: Vec<&str> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::msg(format!(
                "{}: tensor {} appears in more than one shard",
                dir.display(),
                w[0]
            )));
        }
        // Every tensor the index promises must be in the shard it names (a stale index after a
        // partial download would otherwise surface later as a confusing "tensor not found").
        if let Some(map) = index_map {
            let by_name: std::collections::HashMap<&str, &Tensor> =
                m.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
            for (t, f) in &map {
                if let Some(x) = by_name.get(t.as_str()) {
                    let at = m.file_of(x);
                    if at != Some(&dir.join(f)) {
                        return Err(format_err(
                            &index,
                            format!(
                                "lists tensor {t} in {f}, but it is in {}",
                                at.map(|p| p.display().to_string()).unwrap_or_default()
                            ),
                        ));
                    }
                } else if !m.skipped.iter().any(|(n, _)| n == t) {
                    return Err(format_err(
                        &index,
                        format!("lists tensor {t} in {f}, but no shard holds it"),
                    ));
                }
            }
        }
        Ok(m)
    }

    pub fn open_file(path: &Path) -> Result<Self> {
        let mut m = SafetensorsModel {
            tensors: vec![],
            skipped: vec![],
            files: vec![],
            maps: vec![],
        };
        m.add_file(path)?;
        Ok(m)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only private map of a model file; see gguf.rs for the shared contract
        // (the file must not be truncated by another process while mapped).
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.map_err(io)?);
        if map.len() < 8 {
            return Err(format_err(
                path,
                "file shorter than its 8-byte header length",
            ));
        }
        let n = u64::from_le_bytes(map[..8].try_into().unwrap());
        if n > MAX_HEADER || n > map.len() as u64 - 8 {
            return Err(format_err(
                path,
                format!(
                    "header length {n} is larger than the file ({} bytes) or the 100 MB limit",
                    map.len()
                ),
            ));
        }
        let header = std::str::from_utf8(&map[8..8 + n as usize])
            .map_err(|_| format_err(path, "header is not UTF-8"))?;
        let v: serde_json::Value = serde_json::from_str(header)
            .map_err(|e| format_err(path, format!("header JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format_err(path, "header is not a JSON object"))?;
        let data_start = 8 + n as usize;
        let data_len = map.len() - data_start;
        let mut spans: Vec<(usize, usize, String)> = Vec::new();
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |m: &str| format_err(path, format!("tensor {name}: {m}"));
            let dt = info
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("no dtype"))?;
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| {
                    d.as_u64()
                        .map(|d| d as usize)
                        .ok_or_else(|| bad("shape entry is not a non-negative integer"))
                })
                .collect::<Result<_>>()?;
            let offs = info
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
            let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
                (Some(b), Some(e)) if b <= e && e <= data_len as u64 => (b as usize, e as usize),
                _ => {
                    return Err(bad(&format!(
                        "data_offsets {offs:?} outside the {data_len}-byte data section"
                    )))
                }
            };
            let es = elem_size(dt).ok_or_else(|| bad(&format!("unknown dtype {dt}")))?;
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad("shape overflows"))?;
            if count.checked_mul(es) != Some(e - b) {
                return Err(bad(&format!(
                    "{dt} {shape:?} needs {} bytes, offsets give {}",
                    count.saturating_mul(es),
                    e - b
                )));
            }
            spans.push((b, e, name.clone()));
            let Some(dtype) = dtype_of(dt) else {
                self.skipped.push((name.clone(), dt.to_string()));
                continue;
            };
            let mut ne: Vec<usize> = shape.iter().rev().copied().collect();
            if ne.is_empty() {
                ne.push(1); // a scalar
            }
            let data = Bytes::Mapped {
                map: map.clone(),
                offset: data_start + b,
                len: e - b,
            };
            self.tensors
                .push(Tensor::new(name.clone(), dtype, ne, data).map_err(|e| bad(&e.to_string()))?);
        }
        spans.sort();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(format_err(
                path,
                format!("tensors {} and {} overlap", w[0].2, w[1].2),
            ));
        }
        self.files.push(path.to_path_buf());
        self.maps.push(map);
        Ok(())
    }

    /// The file a tensor of this model was mapped from.
    fn file_of(&self, t: &Tensor) -> Option<&PathBuf> {
        let Bytes::Mapped { map, .. } = &t.data else {
            return None;
        };
        self.maps
            .iter()
            .position(|m| Arc::ptr_eq(m, map))
            .map(|i| &self.files[i])
    }

    /// A tensor by name, or a clear error that says why it is not there.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        if let Some(t) = self.tensors.iter().find(|t| t.name == name) {
            return Ok(t);
        }
        match self.skipped.iter().find(|(n, _)| n == name) {
            Some((_, dt)) => Err(Error::Unsupported(format!(
                "tensor {name} has safetensors dtype {dt} (cria loads F32, F16, BF16)"
            ))),
            None => Err(Error::msg(format!("tensor {name} not found"))),
        }
    }
}

/// The safetensors name of a dtype cria can store.
fn st_name(dt: DType) -> Option<&'static str> {
    match dt {
        DType::F32 => Some("F32"),
        DType::F16 => Some("F16"),
        DType::BF16 => Some("BF16"),
        _ => None,
    }
}

/// Writes a safetensors file (for tests and conversions): `(name, dtype, PyTorch-order shape,
/// bytes)` per tensor, data in the given order. The header is padded with spaces to a multiple
/// of 8 bytes, as the reference implementation does, so 8-byte-aligned data stays aligned.
pub fn write_safetensors(path: &Path, tensors: &[(&str, DType, &[usize], &[u8])]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for &(name, dt, shape, bytes) in tensors {
        let st = st_name(dt).ok_or_else(|| {
            Error::Unsupported(format!("safetensors dtype for {dt} (tensor {name})"))
        })?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::msg(format!("tensor {name}: shape {shape:?} overflows")))?;
        if n.checked_mul(dt.type_size()) != Some(bytes.len()) {
            return Err(Error::msg(format!(
                "tensor {name}: {dt} {shape:?} needs {} bytes, got {}",
                n.saturating_mul(dt.type_size()),
                bytes.len()
            )));
        }
        if name == "__metadata__" || header.contains_key(name) {
            return Err(Error::msg(format!(
                "tensor name {name} used twice or reserved"
            )));
        }
        let end = offset + bytes.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": st, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::msg(e.to_string()))?;
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for &(_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn open_bytes(b: &[u8]) -> Result<SafetensorsModel> {
        let dir = std::env::temp_dir().join(format!(
            "cria-st-{}-{:x}",
            std::process::id(),
            b.len() ^ b.iter().map(|&x| x as usize).sum::<usize>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.safetensors");
        std::fs::write(&p, b).unwrap();
        let r = SafetensorsModel::open_file(&p);
        std::fs::remove_dir_all(&dir).ok();
        r
    }

    #[test]
    fn reads_shapes_in_ggml_order() {
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let m = open_bytes(&file(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}"#, &data)).unwrap();
        let t = m.get("w").unwrap();
        assert_eq!((t.ne.clone(), t.rows(), t.cols()), (vec![3, 2], 2, 3));
        assert_eq!(t.to_f32_vec().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn hostile_files_are_errors() {
        let d = [0u8; 24];
        for (h, data) in [
            (
                r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,28]}}"#,
                &d[..],
            ), // past the end
            (
                r#"{"w":{"dtype":"F32","shape":[2,4],"data_offsets":[0,24]}}"#,
                &d[..],
            ), // size mismatch
            (
                r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[8,0]}}"#,
                &d[..],
            ), // reversed
            (
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,24]}}"#,
                &d[..],
            ), // overflow
            (
                r#"{"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
                &d[..],
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
                &d[..],
            ), // overlap
            (r#"[1,2]"#, &d[..]),
            (r#"{"w":"#, &d[..]),
        ] {
            assert!(open_bytes(&file(h, data)).is_err(), "{h} accepted");
        }
        // Header length larger than the file, and absurd.
        let mut b = file("{}", &[]);
        b[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(open_bytes(&b).is_err());
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open_bytes(&b).is_err());
        assert!(open_bytes(&[1, 2, 3]).is_err());
        // Truncation at every length never panics.
        let good = file(
            r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#,
            &d,
        );
        for n in 0..good.len() {
            assert!(open_bytes(&good[..n]).is_err());
        }
    }

    #[test]
    fn unsupported_dtype_is_skipped_with_a_clear_error() {
        let m = open_bytes(&file(
            r#"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
            &[0u8; 16],
        ))
        .unwrap();
        let e = m.get("ids").unwrap_err().to_string();
        assert!(e.contains("I64"), "{e}");
    }
}
