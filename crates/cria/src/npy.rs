//! NumPy .npy reading and writing (float32 logits).
//!
//! Format (numpy/lib/format.py): the magic `\x93NUMPY`, a major and minor version byte, the
//! header length (u16 little-endian in v1.0, u32 in v2.0 and v3.0), then the header: a Python dict
//! literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, padded with
//! spaces and a final newline so that the data starts on a 64-byte boundary; then the raw data.
//! v3.0 only differs in allowing UTF-8 in the header.
//!
//! We write what `numpy.save` writes for a C-ordered little-endian float32 array (v1.0, or v2.0
//! when the header would not fit in 65535 bytes), byte for byte, and read v1/v2/v3 files holding
//! `<f4` in C order. Anything else is an error that says what was found.

use anyhow::{bail, ensure, Context, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the start of the data to 64 bytes (ARRAY_ALIGN in numpy/lib/format.py).
const ALIGN: usize = 64;

/// Writes `data` with the given `shape` (C order) as a little-endian float32 .npy file.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("shape {shape:?} overflows"))?;
    ensure!(
        n == data.len(),
        "shape {shape:?} holds {n} values but {} were given",
        data.len()
    );

    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(&header(shape))?;
    let mut buf = Vec::with_capacity(4 * data.len().min(1 << 16));
    for chunk in data.chunks(1 << 16) {
        buf.clear();
        for &x in chunk {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The bytes before the data, exactly as `numpy.save` makes them.
fn header(shape: &[usize]) -> Vec<u8> {
    // Python's tuple repr: "()", "(5,)", "(2, 3)".
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad with spaces, ending in '\n', so that magic + version + length + header is a multiple of
    // ALIGN; v1.0 has a 2-byte length field, v2.0 a 4-byte one.
    for (version, len_bytes) in [(1u8, 2usize), (2u8, 4usize)] {
        let prefix = MAGIC.len() + 2 + len_bytes;
        let unpadded = prefix + dict.len() + 1;
        let total = unpadded.div_ceil(ALIGN) * ALIGN;
        let hlen = total - prefix;
        if version == 1 && hlen > u16::MAX as usize {
            continue;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(hlen as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(hlen as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    unreachable!("a v2.0 header holds any shape")
}

/// Reads a float32 .npy file: its shape and its values in C order.
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{}: not a float32 .npy file", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == MAGIC,
        "missing the \\x93NUMPY magic"
    );
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, start): (usize, usize) = match (major, minor) {
        (1, 0) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        (2, 0) | (3, 0) => {
            ensure!(bytes.len() >= 12, "truncated header length");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => bail!("unsupported .npy version {major}.{minor}"),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .context("truncated header")?;
    // v1/v2 headers are latin-1, v3 UTF-8; the keys and values we accept are ASCII either way.
    let text = std::str::from_utf8(&bytes[start..end]).context("header is not text")?;
    let h = parse_header(text)?;
    ensure!(
        h.descr == "<f4",
        "dtype {:?} (only little-endian float32 '<f4' is supported)",
        h.descr
    );
    ensure!(
        !h.fortran_order,
        "Fortran-ordered arrays are not supported (save with C order)"
    );
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("shape overflows")?;
    let data = &bytes[end..];
    let want = n.checked_mul(4).context("shape overflows")?;
    ensure!(
        data.len() == want,
        "shape {:?} needs {want} data bytes but the file has {}",
        h.shape,
        data.len()
    );
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((h.shape, values))
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dict: the three keys numpy writes, string / bool / tuple-of-int values.
fn parse_header(text: &str) -> Result<Header> {
    let mut p = Lexer {
        s: text.trim_end_matches(['\n', ' ', '\0']).as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => bail!("unexpected header key {other:?}"),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    ensure!(
        p.i == p.s.len(),
        "trailing characters after the header dict"
    );
    Ok(Header {
        descr: descr.context("header lacks 'descr'")?,
        fortran_order: fortran.context("header lacks 'fortran_order'")?,
        shape: shape.context("header lacks 'shape'")?,
    })
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        ensure!(
            self.eat(c),
            "expected '{}' at header offset {}",
            c as char,
            self.i
        );
        Ok(())
    }
    fn string(&mut self) -> Result<String> {
        self.skip_ws();
        let q = *self
            .s
            .get(self.i)
            .context("expected a string, found the end")?;
        ensure!(
            q == b'\'' || q == b'"',
            "expected a quoted string at header offset {}",
            self.i
        );
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == q)
            .context("unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }
    fn boolean(&mut self) -> Result<bool> {
        self.skip_ws();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        bail!("expected True or False at header offset {}", self.i)
    }
    fn tuple(&mut self) -> Result<Vec<usize>> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
            ensure!(
                !digits.is_empty(),
                "expected a dimension at header offset {start}"
            );
            dims.push(
                digits
                    .parse()
                    .with_context(|| format!("dimension {digits} too large"))?,
            );
            // Files from Python 2 numpy may write a dimension as a long: "3L".
            if self.s.get(self.i) == Some(&b'L') {
                self.i += 1;
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures in tests/fixtures/npy were written by numpy (tests/fixtures/npy/make_npy.py).
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/npy")
            .join(name)
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cria-npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// The values make_npy.py stores in a23.npy: arange(6) * 0.5 - 1 with the special values in
    /// slots 1, 3 and 5.
    fn a23() -> Vec<f32> {
        vec![-1.0, -0.0, 0.0, f32::INFINITY, 1.0, 1e-45]
    }

    #[test]
    fn reads_numpy_files() {
        let (shape, v) = read_f32(fixture("a23.npy")).unwrap();
        assert_eq!(shape, [2, 3]);
        let want = a23();
        assert_eq!(v.len(), want.len());
        for (a, b) in v.iter().zip(&want) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        let (shape, v) = read_f32(fixture("scalar.npy")).unwrap();
        assert!(shape.is_empty());
        assert_eq!(v, [3.5]);
        let (shape, v) = read_f32(fixture("empty.npy")).unwrap();
        assert_eq!(shape, [0, 4]);
        assert!(v.is_empty());
        let (shape, v) = read_f32(fixture("vec5.npy")).unwrap();
        assert_eq!(shape, [5]);
        assert_eq!(v, [0.0, 1.0, 2.0, 3.0, 4.0]);
        let (_, nan) = read_f32(fixture("nan.npy")).unwrap();
        assert!(nan[0].is_nan());
        // The same array under v2.0 and v3.0 headers.
        for f in ["a23_v2.npy", "a23_v3.npy"] {
            let (shape, v) = read_f32(fixture(f)).unwrap();
            assert_eq!(shape, [2, 3], "{f}");
            assert_eq!(
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn writes_what_numpy_saves() {
        // Byte-identical to numpy.save for the same arrays.
        for (name, shape, data) in [
            ("a23.npy", vec![2, 3], a23()),
            ("scalar.npy", vec![], vec![3.5]),
            ("empty.npy", vec![0, 4], vec![]),
            ("vec5.npy", vec![5], vec![0.0, 1.0, 2.0, 3.0, 4.0]),
        ] {
            let out = tmp(name);
            write_f32(&out, &shape, &data).unwrap();
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(fixture(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn round_trip() {
        let shape = [3, 7, 11];
        let data: Vec<f32> = (0..3 * 7 * 11)
            .map(|i| (i as f32 * 0.37).sin() * 1e3)
            .collect();
        let out = tmp("rt.npy");
        write_f32(&out, &shape, &data).unwrap();
        let (s, d) = read_f32(&out).unwrap();
        assert_eq!(s, shape);
        assert_eq!(d, data);
    }

    #[test]
    fn large_rank_header_uses_v2() {
        // A shape whose header does not fit in u16 switches to v2.0, as numpy does.
        let shape = vec![1usize; 30_000];
        let h = header(&shape);
        assert_eq!(&h[6..8], &[2, 0]);
        assert_eq!(h.len() % ALIGN, 0);
        let out = tmp("v2.npy");
        write_f32(&out, &shape, &[7.0]).unwrap();
        let (s, d) = read_f32(&out).unwrap();
        assert_eq!(s.len(), 30_000);
        assert_eq!(d, [7.0]);
    }

    #[test]
    fn rejects_wrong_data_length() {
        let err = write_f32(tmp("bad.npy"), &[2, 2], &[1.0; 3]).unwrap_err();
        assert!(err.to_string().contains("holds 4 values but 3"), "{err}");
    }

    #[test]
    fn rejects_malformed_and_unsupported_files() {
        let cases = [
            ("f64.npy", "\"<f8\""),
            ("big_endian.npy", "\">f4\""),
            ("fortran.npy", "Fortran"),
        ];
        for (f, needle) in cases {
            let err = format!("{:#}", read_f32(fixture(f)).unwrap_err());
            assert!(err.contains(needle), "{f}: {err}");
        }
        let good = std::fs::read(fixture("a23.npy")).unwrap();
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("bad magic", b"\x93NUMPZ\x01\x00".to_vec()),
            ("truncated data", good[..good.len() - 1].to_vec()),
            ("extra data", [good.clone(), vec![0]].concat()),
            ("truncated header", good[..40].to_vec()),
            ("version 9", [&good[..6], &[9, 0], &good[8..]].concat()),
            ("header garbage", {
                let mut g = good.clone();
                g[12] = b'#';
                g
            }),
        ];
        for (what, bytes) in bad {
            let p = tmp("malformed.npy");
            std::fs::write(&p, &bytes).unwrap();
            assert!(read_f32(&p).is_err(), "{what} was accepted");
        }
    }
}
