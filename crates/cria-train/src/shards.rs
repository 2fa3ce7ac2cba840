//! Token shards of pretraining data (issue 24), written by `cria data prepare` and read by the
//! trainer: llm.c-style files, a small fixed header then the tokens.
//!
//! Layout (little-endian), 32 bytes of header:
//!
//! | bytes  | field                                          |
//! |--------|------------------------------------------------|
//! | 0..8   | magic `b"CRIATOK\0"`                           |
//! | 8..12  | version (u32) = 1                              |
//! | 12..16 | token width in bytes (u32): 2 (u16) or 4 (u32) |
//! | 16..24 | token count (u64)                              |
//! | 24..28 | vocabulary size (u32): every token is below it |
//! | 28..32 | reserved, 0                                    |
//!
//! then `count` tokens of `width` bytes. The width is 2 when the vocabulary has at most 65536
//! tokens ([`width_for_vocab`]), else 4. A file whose length is not exactly header + count x width
//! (truncated, or with trailing bytes) is refused at [`Shard::open`], as is any header field out of
//! range: a hostile or damaged file gives an [`Error`], never a panic or a read past the end.
//!
//! A prepared folder holds `train_000000.bin`, ..., `val_000000.bin`, ... and `data.json` (the
//! manifest: tokenizer, vocabulary size, counts, the shard list, `done`); [`open_split`] opens the
//! shards of one split of a finished folder in order.

use crate::Error;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first 8 bytes of every shard.
pub const MAGIC: [u8; 8] = *b"CRIATOK\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Header size in bytes; the tokens start here.
pub const HEADER_LEN: usize = 32;
/// The largest vocabulary a shard may declare (`cria tokenizer train`'s bound as well).
pub const MAX_VOCAB: u32 = 1 << 24;

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error(format!("{}: {msg}", path.display()))
}

/// Token width in bytes for a vocabulary of `vocab_size` tokens: 2 up to 65536, else 4.
pub fn width_for_vocab(vocab_size: u32) -> u32 {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// A shard's header, decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub count: u64,
    pub vocab_size: u32,
}

impl Header {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.width.to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..28].copy_from_slice(&self.vocab_size.to_le_bytes());
        h
    }

    /// Decodes and checks a header against the file length `file_len`; `path` names the file in
    /// errors.
    pub fn decode(bytes: &[u8], file_len: u64, path: &Path) -> Result<Header, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(err(
                path,
                format!(
                    "not a token shard: {} bytes, shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        if bytes[0..8] != MAGIC {
            return Err(err(path, "not a token shard (bad magic; expected CRIATOK)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(err(
                path,
                format!("shard format version {version}; this cria reads version {VERSION}"),
            ));
        }
        let width = u32_at(12);
        if width != 2 && width != 4 {
            return Err(err(
                path,
                format!("token width {width} bytes (2 or 4 expected)"),
            ));
        }
        let vocab_size = u32_at(24);
        if vocab_size == 0 || vocab_size > MAX_VOCAB || width < width_for_vocab(vocab_size) {
            return Err(err(
                path,
                format!("vocabulary size {vocab_size} does not fit a {width}-byte token"),
            ));
        }
        let count = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let want = count
            .checked_mul(width as u64)
            .and_then(|b| b.checked_add(HEADER_LEN as u64));
        match want {
            Some(w) if w == file_len => {}
            Some(w) if w > file_len => {
                return Err(err(
                    path,
                    format!(
                        "truncated: the header says {count} tokens ({w} bytes), the file has {file_len}"
                    ),
                ))
            }
            Some(w) => {
                return Err(err(
                    path,
                    format!("{} bytes after the {count} tokens the header declares", file_len - w),
                ))
            }
            None => return Err(err(path, format!("token count {count} overflows"))),
        }
        Ok(Header {
            width,
            count,
            vocab_size,
        })
    }
}

/// Writes one shard: tokens are appended, [`ShardWriter::finish`] writes the header and renames
/// the file from `NAME.tmp` into place, so a shard under its final name is always complete.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    width: u32,
    vocab_size: u32,
    count: u64,
}

impl ShardWriter {
    /// Starts `path` (written as `path` + `.tmp` until finished) for a vocabulary of `vocab_size`.
    pub fn create(path: &Path, vocab_size: u32) -> Result<ShardWriter, Error> {
        if vocab_size == 0 || vocab_size > MAX_VOCAB {
            return Err(err(
                path,
                format!("vocabulary size {vocab_size} out of range"),
            ));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| err(&tmp, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            width: width_for_vocab(vocab_size),
            vocab_size,
            count: 0,
        })
    }

    /// Tokens written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends `tokens`; a token outside the vocabulary is an error.
    pub fn push(&mut self, tokens: &[u32]) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(tokens.len() * self.width as usize);
        for &t in tokens {
            if t >= self.vocab_size {
                return Err(err(
                    &self.path,
                    format!("token {t} outside the vocabulary of {}", self.vocab_size),
                ));
            }
            if self.width == 2 {
                buf.extend_from_slice(&(t as u16).to_le_bytes());
            } else {
                buf.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.out.write_all(&buf).map_err(|e| err(&self.tmp, e))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Writes the header, flushes to disk and renames the file into place.
    pub fn finish(self) -> Result<PathBuf, Error> {
        let h = Header {
            width: self.width,
            count: self.count,
            vocab_size: self.vocab_size,
        };
        let mut f = self
            .out
            .into_inner()
            .map_err(|e| err(&self.tmp, e.error()))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| err(&self.tmp, e))?;
        f.write_all(&h.encode()).map_err(|e| err(&self.tmp, e))?;
        f.sync_all().map_err(|e| err(&self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| err(&self.path, e))?;
        Ok(self.path)
    }
}

/// A shard opened for reading: the file memory-mapped, its header checked against its length.
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
}

impl Shard {
    /// Maps `path` and checks its header (magic, version, width, vocabulary, exact length).
    pub fn open(path: &Path) -> Result<Shard, Error> {
        let f = std::fs::File::open(path).map_err(|e| err(path, e))?;
        let len = f.metadata().map_err(|e| err(path, e))?.len();
        if len < HEADER_LEN as u64 {
            return Err(err(
                path,
                format!(
                    "not a token shard: {len} bytes, shorter than the {HEADER_LEN}-byte header"
                ),
            ));
        }
        // SAFETY: the map is read-only and the file is not modified while it is open (shards are
        // written under a temporary name and renamed into place, never rewritten); the same
        // contract as cria-core's GGUF / safetensors maps. Every read below is bounds-checked
        // against the length the header was validated with.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| err(path, e))?;
        let header = Header::decode(&map, map.len() as u64, path)?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Token `i` (panics past the end, as slice indexing does; use [`Shard::read`] for checked
    /// ranges).
    pub fn get(&self, i: usize) -> u32 {
        assert!(i < self.len(), "token {i} of a shard of {}", self.len());
        let w = self.header.width as usize;
        let b = &self.map[HEADER_LEN + i * w..HEADER_LEN + (i + 1) * w];
        if w == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Copies tokens `start..start + out.len()` into `out`; a range past the end, or a token at
    /// or above the declared vocabulary size (a damaged file), is an error.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<(), Error> {
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                err(
                    &self.path,
                    format!(
                        "tokens {start}..+{} past the end ({})",
                        out.len(),
                        self.len()
                    ),
                )
            })?;
        let w = self.header.width as usize;
        let bytes = &self.map[HEADER_LEN + start * w..HEADER_LEN + end * w];
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(w)) {
            *o = if w == 2 {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            };
            if *o >= self.header.vocab_size {
                return Err(err(
                    &self.path,
                    format!(
                        "token {} outside the vocabulary of {}",
                        o, self.header.vocab_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// All tokens, checked.
    pub fn to_vec(&self) -> Result<Vec<u32>, Error> {
        let mut v = vec![0u32; self.len()];
        self.read(0, &mut v)?;
        Ok(v)
    }
}

/// Opens the shards of `split` ("train" or "val") of a prepared folder, in order, from its
/// manifest `data.json`; a manifest whose run did not finish (`done` false) is an error, and so
/// is a shard whose token count or vocabulary differs from the manifest's.
pub fn open_split(dir: &Path, split: &str) -> Result<Vec<Shard>, Error> {
    let mpath = dir.join("data.json");
    let text = std::fs::read(&mpath).map_err(|e| err(&mpath, e))?;
    let m: serde_json::Value = serde_json::from_slice(&text).map_err(|e| err(&mpath, e))?;
    if m["done"].as_bool() != Some(true) {
        return Err(err(
            &mpath,
            "the data preparation did not finish (done is not true): rerun `cria data prepare` with the same arguments to resume it",
        ));
    }
    let names = m[split]["shards"]
        .as_array()
        .ok_or_else(|| err(&mpath, format!("no shard list for split {split:?}")))?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let name = n["file"]
            .as_str()
            .filter(|s| !s.contains('/') && !s.contains('\\') && !s.starts_with('.'))
            .ok_or_else(|| err(&mpath, format!("bad shard entry {n}")))?;
        let path = dir.join(name);
        if !path.exists() {
            return Err(err(
                &mpath,
                format!(
                    "names the {split} shard {name}, which is missing from {} (the folder is \
                     incomplete: prepare the data again into a new folder)",
                    dir.display()
                ),
            ));
        }
        let s = Shard::open(&path)?;
        if n["tokens"].as_u64() != Some(s.header.count)
            || m["vocab_size"].as_u64() != Some(s.header.vocab_size as u64)
        {
            return Err(err(
                &s.path,
                format!(
                    "{} tokens over a vocabulary of {}; data.json says {} over {}",
                    s.header.count, s.header.vocab_size, n["tokens"], m["vocab_size"]
                ),
            ));
        }
        out.push(s);
    }
    Ok(out)
}
