//! Importance matrices (llama.cpp's `llama-imatrix` output, `cria imatrix`'s output, and what
//! `cria quantize --imatrix` reads).
//!
//! Two on-disk formats, both read:
//! - the current GGUF format (written by [`Imatrix::write`], byte for byte as `llama-imatrix`
//!   writes it): metadata `general.type = "imatrix"`, `imatrix.datasets` (string array),
//!   `imatrix.chunk_count` and `imatrix.chunk_size` (u32); per weight `W` two F32 tensors, sorted by
//!   name: `W.in_sum2` (shape `[n_per_row, n_mat]`: the raw sum over tokens of the squared input
//!   activation of each column, one row per expert matrix) and `W.counts` (shape `[1, n_mat]`: tokens
//!   seen per matrix);
//! - the legacy `.dat` format: `i32 n_entries`, then per entry `i32 len, name bytes, i32 ncall,
//!   i32 nval, nval f32` (the values already divided by the token count and multiplied by
//!   `ncall`), then optionally `i32 chunk_count, i32 len, dataset bytes`.
//!
//! A legacy entry is held as `in_sum2 = values`, `counts = [ncall]` (or `[1]` when `ncall <= 0`),
//! so that [`Imatrix::quant_weights`] gives exactly what `llama-quantize` computes from either
//! format (`sums / count`, and `values / ncall` resp. the raw values for legacy files).

use crate::gguf::{GgufFile, GgufStreamWriter, StrArray, TensorInfo, Value, DEFAULT_ALIGNMENT};
use crate::{DType, Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";
/// Longest entry name accepted from a legacy file (GGML tensor names are at most 64 bytes; this
/// only bounds what a hostile file can make us allocate).
const MAX_NAME: usize = 4096;

/// One weight's accumulated statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// The weight's GGUF name (e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Sum of squared input activations per column, `n_per_row * n_mat` values (matrix-major).
    pub in_sum2: Vec<f32>,
    /// Tokens accumulated per matrix, `n_mat` values (1 for a dense weight).
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// Values per matrix (the weight's row length).
    pub fn n_per_row(&self) -> usize {
        self.in_sum2.len() / self.counts.len().max(1)
    }
    fn check(&self) -> std::result::Result<(), String> {
        if self.name.is_empty() {
            return Err("an entry has an empty name".into());
        }
        if self.counts.is_empty() {
            return Err(format!("entry {}: no counts", self.name));
        }
        if self.in_sum2.is_empty() || self.in_sum2.len() % self.counts.len() != 0 {
            return Err(format!(
                "entry {}: {} sums do not split into {} matrices",
                self.name,
                self.in_sum2.len(),
                self.counts.len()
            ));
        }
        Ok(())
    }
}

/// An importance matrix: entries (sorted by name when read), the calibration data sets, and how
/// many chunks of how many tokens were accumulated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: Vec<ImatrixEntry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
}

impl Imatrix {
    /// Reads a GGUF imatrix (recognised by its magic) or, failing that, a legacy `.dat` one.
    /// As `llama-quantize` does, a GGUF file must carry the three `imatrix.*` keys.
    pub fn read(path: &Path) -> Result<Imatrix> {
        let mut magic = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let mut got = 0;
            while got < 4 {
                match f.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                }
            }
            got
        };
        if n == 4 && &magic == crate::gguf::MAGIC {
            Self::read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Self::parse_legacy(path, &bytes)
        }
    }

    fn read_gguf(path: &Path) -> Result<Imatrix> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            format: "GGUF imatrix",
            msg,
        };
        let g = GgufFile::open(path)?;
        if g.tensors.is_empty() {
            return Err(bad("no tensors".into()));
        }
        let (ds, cc, cs) = (
            g.get(KEY_DATASETS),
            g.get(KEY_CHUNK_COUNT),
            g.get(KEY_CHUNK_SIZE),
        );
        if ds.is_none() || cc.is_none() || cs.is_none() {
            return Err(bad(format!(
                "missing imatrix metadata ({KEY_DATASETS}, {KEY_CHUNK_COUNT}, {KEY_CHUNK_SIZE})"
            )));
        }
        let datasets = match ds.and_then(Value::as_array) {
            Some(crate::gguf::Array::String(s)) => s.iter().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let as_u32 = |v: Option<&Value>, key: &str| {
            v.and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(format!("{key} is not an unsigned 32-bit integer")))
        };
        let chunk_count = as_u32(cc, KEY_CHUNK_COUNT)?;
        let chunk_size = as_u32(cs, KEY_CHUNK_SIZE)?;

        let mut pairs: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in g.tensors.iter().enumerate() {
            if let Some(name) = t.name.strip_suffix(SUFFIX_SUMS) {
                pairs.entry(name).or_default().0 = Some(i);
            } else if let Some(name) = t.name.strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(name).or_default().1 = Some(i);
            }
        }
        let mut entries = Vec::with_capacity(pairs.len());
        for (name, p) in pairs {
            let (Some(si), Some(ci)) = p else {
                return Err(bad(format!("mismatched sums and counts for {name}")));
            };
            let (s, c) = (&g.tensors[si], &g.tensors[ci]);
            if s.dtype != DType::F32 || c.dtype != DType::F32 {
                return Err(bad(format!("sums and counts for {name} must be F32")));
            }
            let e = ImatrixEntry {
                name: name.to_owned(),
                in_sum2: f32s(s.bytes()),
                counts: f32s(c.bytes()),
            };
            e.check().map_err(bad)?;
            entries.push(e);
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
        })
    }

    fn parse_legacy(path: &Path, b: &[u8]) -> Result<Imatrix> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            format: "imatrix (legacy .dat)",
            msg,
        };
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize, what: &str| -> Result<i32> {
            let v = b
                .get(*pos..*pos + 4)
                .ok_or_else(|| bad(format!("truncated at byte {} reading {what}", *pos)))?;
            *pos += 4;
            Ok(i32::from_le_bytes(v.try_into().unwrap()))
        };
        let n_entries = i32_at(&mut pos, "the entry count")?;
        if n_entries < 1 {
            return Err(bad(
                "no data (not a GGUF file, and no entries as a legacy imatrix)".into(),
            ));
        }
        // Each entry takes at least 16 bytes: a hostile count cannot make us reserve much.
        let mut map: BTreeMap<String, ImatrixEntry> = BTreeMap::new();
        for i in 0..n_entries {
            let len = i32_at(&mut pos, "a name length")?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= MAX_NAME)
                .ok_or_else(|| bad(format!("entry {i}: name length {len}")))?;
            let name = b
                .get(pos..pos + len)
                .ok_or_else(|| bad(format!("entry {i}: truncated name")))?;
            pos += len;
            // llama.cpp reads the name as a C string: it ends at the first NUL.
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| bad(format!("entry {i}: name is not UTF-8")))?;
            let ncall = i32_at(&mut pos, "a call count")?;
            let nval = i32_at(&mut pos, "a value count")?;
            if nval < 1 {
                return Err(bad(format!("entry {i} ({name}): {nval} values")));
            }
            let nbytes = nval as usize * 4;
            let vals = b
                .get(pos..pos + nbytes)
                .ok_or_else(|| bad(format!("entry {i} ({name}): truncated values")))?;
            pos += nbytes;
            let e = ImatrixEntry {
                name: name.clone(),
                in_sum2: f32s(vals),
                counts: vec![if ncall > 0 { ncall as f32 } else { 1.0 }],
            };
            e.check().map_err(bad)?;
            if map.insert(name.clone(), e).is_some() {
                return Err(bad(format!("entry {name} appears twice")));
            }
        }
        // Optional trailer: chunk count, then the dataset name.
        let mut chunk_count = 0u32;
        let mut datasets = Vec::new();
        if pos < b.len() {
            if let Ok(n) = i32_at(&mut pos, "") {
                chunk_count = n.max(0) as u32;
                if let Ok(len) = i32_at(&mut pos, "") {
                    if len > 0 {
                        if let Some(s) = b.get(pos..pos + len as usize) {
                            let s = &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())];
                            datasets.push(String::from_utf8_lossy(s).into_owned());
                        }
                    }
                }
            }
        }
        Ok(Imatrix {
            entries: map.into_values().collect(),
            datasets,
            chunk_count,
            chunk_size: 0,
        })
    }

    /// Writes the GGUF format exactly as `llama-imatrix` does (entries sorted by name; the file
    /// appears under `path` only once complete).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut order: Vec<&ImatrixEntry> = self.entries.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        for w in order.windows(2) {
            if w[0].name == w[1].name {
                return Err(Error::msg(format!(
                    "imatrix entry {} appears twice",
                    w[0].name
                )));
            }
        }
        let mut tensors = Vec::with_capacity(order.len() * 2);
        for e in &order {
            e.check().map_err(Error::msg)?;
            let n_mat = e.counts.len();
            tensors.push(TensorInfo {
                name: format!("{}{SUFFIX_SUMS}", e.name),
                dtype: DType::F32,
                ne: vec![e.in_sum2.len() / n_mat, n_mat],
            });
            tensors.push(TensorInfo {
                name: format!("{}{SUFFIX_COUNTS}", e.name),
                dtype: DType::F32,
                ne: vec![1, n_mat],
            });
        }
        let gtype = Value::String("imatrix".into());
        let ds = Value::Array(crate::gguf::Array::String(
            self.datasets.iter().collect::<StrArray>(),
        ));
        let cc = Value::U32(self.chunk_count);
        let cs = Value::U32(self.chunk_size);
        let meta: [(&str, &Value); 4] = [
            ("general.type", &gtype),
            (KEY_DATASETS, &ds),
            (KEY_CHUNK_COUNT, &cc),
            (KEY_CHUNK_SIZE, &cs),
        ];
        let mut w = GgufStreamWriter::create(path, &meta, &tensors, DEFAULT_ALIGNMENT)?;
        for e in order {
            w.write_tensor(bytemuck::cast_slice(&e.in_sum2))?;
            w.write_tensor(bytemuck::cast_slice(&e.counts))?;
        }
        w.finish()
    }

    /// The entry for a weight, if any.
    pub fn entry(&self, tensor_name: &str) -> Option<&ImatrixEntry> {
        self.entries.iter().find(|e| e.name == tensor_name)
    }

    /// The per-column importance `llama-quantize` hands to `ggml_quantize_chunk` for this weight
    /// (`n_per_row * n_mat` values; rows of matrix `j` use `[j*n_per_row..][..n_per_row]`): each
    /// matrix's sums divided by its token count (rounded to an integer, as llama.cpp loads it),
    /// or all 1 for a matrix that saw no tokens.
    pub fn quant_weights(&self, tensor_name: &str) -> Option<Vec<f32>> {
        let e = self.entry(tensor_name)?;
        let ne0 = e.n_per_row();
        let mut out = vec![0f32; e.in_sum2.len()];
        for (j, &c) in e.counts.iter().enumerate() {
            // llama.cpp: counts[j] = lround(f32) into int64_t, then (float) counts[j].
            let count = c.round() as i64 as f32;
            let (src, dst) = (&e.in_sum2[j * ne0..][..ne0], &mut out[j * ne0..][..ne0]);
            if count > 0.0 {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s / count;
                }
            } else {
                dst.fill(1.0);
            }
        }
        Some(out)
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cria-imatrix-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn sample() -> Imatrix {
        Imatrix {
            entries: vec![
                ImatrixEntry {
                    name: "blk.1.ffn_down.weight".into(),
                    in_sum2: (0..8).map(|i| i as f32 * 1.5).collect(),
                    counts: vec![4.0],
                },
                ImatrixEntry {
                    name: "blk.0.ffn_up_exps.weight".into(),
                    in_sum2: (0..6).map(|i| i as f32 + 0.25).collect(),
                    counts: vec![2.0, 0.0, 3.0],
                },
            ],
            datasets: vec!["calib.txt".into()],
            chunk_count: 3,
            chunk_size: 128,
        }
    }

    #[test]
    fn gguf_round_trip_sorted() {
        let p = tmp("rt.gguf");
        let m = sample();
        m.write(&p).unwrap();
        let r = Imatrix::read(&p).unwrap();
        let mut want = m.clone();
        want.entries.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(r, want);
        // The header lists the tensors as llama-imatrix does: sums [n_per_row, n_mat], counts [1, n_mat].
        let g = GgufFile::open(&p).unwrap();
        let names: Vec<_> = g.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.ffn_up_exps.weight.in_sum2",
                "blk.0.ffn_up_exps.weight.counts",
                "blk.1.ffn_down.weight.in_sum2",
                "blk.1.ffn_down.weight.counts"
            ]
        );
        assert_eq!(g.tensors[0].ne, vec![2, 3]);
        assert_eq!(g.tensors[1].ne, vec![1, 3]);
        assert_eq!(g.get_str("general.type"), Some("imatrix"));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn quant_weights_per_expert() {
        let m = sample();
        let w = m.quant_weights("blk.0.ffn_up_exps.weight").unwrap();
        assert_eq!(
            w,
            vec![0.25 / 2.0, 1.25 / 2.0, 1.0, 1.0, 4.25 / 3.0, 5.25 / 3.0]
        );
        let d = m.quant_weights("blk.1.ffn_down.weight").unwrap();
        assert_eq!(d[3], 4.5 / 4.0);
        assert!(m.quant_weights("output.weight").is_none());
    }

    fn legacy_bytes(trailer: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2i32.to_le_bytes());
        for (name, ncall, vals) in [
            ("blk.0.attn_q.weight", 3i32, vec![3.0f32, 6.0]),
            ("blk.0.attn_k.weight", 0i32, vec![7.0f32, 8.0]),
        ] {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
            for v in vals {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        if trailer {
            b.extend_from_slice(&5i32.to_le_bytes());
            b.extend_from_slice(&4i32.to_le_bytes());
            b.extend_from_slice(b"wiki");
        }
        b
    }

    #[test]
    fn legacy_read() {
        let p = tmp("legacy.dat");
        std::fs::write(&p, legacy_bytes(true)).unwrap();
        let m = Imatrix::read(&p).unwrap();
        assert_eq!(m.chunk_count, 5);
        assert_eq!(m.chunk_size, 0);
        assert_eq!(m.datasets, vec!["wiki".to_string()]);
        assert_eq!(m.entries[0].name, "blk.0.attn_k.weight");
        // legacy: values / ncall, raw values when ncall <= 0
        assert_eq!(
            m.quant_weights("blk.0.attn_q.weight").unwrap(),
            vec![1.0, 2.0]
        );
        assert_eq!(
            m.quant_weights("blk.0.attn_k.weight").unwrap(),
            vec![7.0, 8.0]
        );
        std::fs::write(&p, legacy_bytes(false)).unwrap();
        let m = Imatrix::read(&p).unwrap();
        assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn hostile_files_error() {
        let p = tmp("bad.dat");
        let full = legacy_bytes(true);
        // every truncation inside the entries is an error, never a panic
        for cut in 0..full.len() - 12 {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(Imatrix::read(&p).is_err(), "cut at {cut}");
        }
        // a huge name length or value count is refused without allocating it
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("name length"), "{e}");
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(b"x");
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("truncated values"), "{e}");
        // a GGUF without the imatrix keys, or with unpaired tensors
        let g = tmp("nometa.gguf");
        let info = [TensorInfo {
            name: "a.in_sum2".into(),
            dtype: DType::F32,
            ne: vec![2, 1],
        }];
        let mut w = GgufStreamWriter::create(&g, &[], &info, 32).unwrap();
        w.write_tensor(bytemuck::cast_slice(&[1f32, 2.0])).unwrap();
        w.finish().unwrap();
        let e = Imatrix::read(&g).unwrap_err().to_string();
        assert!(e.contains("missing imatrix metadata"), "{e}");
        let ds = Value::Array(crate::gguf::Array::String(StrArray::default()));
        let u = Value::U32(1);
        let meta: [(&str, &Value); 3] = [
            (KEY_DATASETS, &ds),
            (KEY_CHUNK_COUNT, &u),
            (KEY_CHUNK_SIZE, &u),
        ];
        let mut w = GgufStreamWriter::create(&g, &meta, &info, 32).unwrap();
        w.write_tensor(bytemuck::cast_slice(&[1f32, 2.0])).unwrap();
        w.finish().unwrap();
        let e = Imatrix::read(&g).unwrap_err().to_string();
        assert!(e.contains("mismatched sums and counts for a"), "{e}");
        // writing an inconsistent entry is refused and leaves nothing behind
        let mut m = sample();
        m.entries[0].counts = vec![1.0, 1.0, 1.0];
        let o = tmp("inconsistent.gguf");
        assert!(m.write(&o).is_err());
        assert!(!o.exists());
        for f in [p, g] {
            std::fs::remove_file(f).unwrap();
        }
    }
}
