//! NumPy `.npy` float32 files (format v1.0 written; v1-v3 read): how `cria logits` hands logits to
//! Python and how reference fixtures come back. Only little-endian '<f4' in C order.

use crate::{Error, Result};
use std::path::Path;

pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::msg(format!(
            "npy: shape {shape:?} holds {n} values, got {}",
            data.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let b = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |m: &str| Error::Format {
        path: path.to_path_buf(),
        format: "npy",
        msg: m.to_string(),
    };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let (hlen, hstart) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let header = b
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad("only little-endian float32 ('<f4') is supported"));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let s = header
        .split("'shape':")
        .nth(1)
        .ok_or_else(|| bad("no shape"))?;
    let s = &s[s.find('(').ok_or_else(|| bad("no shape"))? + 1
        ..s.find(')').ok_or_else(|| bad("no shape"))?];
    let shape = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let body = &b[hstart + hlen..];
    if body.len() != n * 4 {
        return Err(bad(&format!(
            "{} data bytes for shape {shape:?}",
            body.len()
        )));
    }
    Ok((
        shape,
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip_and_malformed() {
        let dir = std::env::temp_dir().join(format!("cria-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_f32(&p, &[3, 4], &data).unwrap();
        assert_eq!(read_f32(&p).unwrap(), (vec![3, 4], data.clone()));
        write_f32(&p, &[12], &data).unwrap();
        assert_eq!(read_f32(&p).unwrap().0, vec![12]);
        assert!(write_f32(&p, &[5], &data).is_err());
        std::fs::write(&p, b"\x93NUMPY\x01\x00\xff\xff{").unwrap();
        assert!(read_f32(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
