//! Hostile GGUF input: every malformed file must give an `Err` (never a panic, never a huge
//! allocation or a long loop), and the error should say what is wrong.

use cria_core::gguf::{Array, GgufFile, GgufWriter};
use cria_core::{quant, DType, Error};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

fn tmp_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    // Callers remove the file when done.
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "cria-core-gguf-hostile-{}-{n}.gguf",
        std::process::id()
    ))
}

fn open_bytes(b: &[u8]) -> Result<GgufFile, Error> {
    let p = tmp_path();
    std::fs::write(&p, b).unwrap();
    let r = GgufFile::open(&p);
    std::fs::remove_file(&p).ok();
    r
}

/// Opens `b`, which must fail with a message containing `want`.
#[track_caller]
fn expect_err(b: &[u8], want: &str) -> Error {
    let e = open_bytes(b)
        .err()
        .unwrap_or_else(|| panic!("accepted a file that should fail with {want:?}"));
    let msg = e.to_string();
    assert!(
        msg.to_lowercase().contains(&want.to_lowercase()),
        "error {msg:?} does not mention {want:?}"
    );
    e
}

/// Hand-assembled GGUF headers.
#[derive(Clone)]
struct H(Vec<u8>);
impl H {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> H {
        let mut h = H(b"GGUF".to_vec());
        h.u32(version).u64(n_tensors).u64(n_kv);
        h
    }
    fn u32(&mut self, x: u32) -> &mut H {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut H {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut H {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut H {
        self.str(k.as_bytes()).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut H {
        self.str(name.as_bytes()).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to `align` and appends `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().div_ceil(align) * align + n, 0x5a);
        v
    }
}

fn small_valid() -> Vec<u8> {
    let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.1).cos()).collect();
    let mut q4 = vec![0u8; DType::Q4_0.bytes_for(64).unwrap()];
    quant::quantize(DType::Q4_0, &x[..64], &mut q4).unwrap();
    let mut qk = vec![0u8; DType::Q4_K.bytes_for(256).unwrap()];
    quant::quantize(DType::Q4_K, &x[..256], &mut qk).unwrap();
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("llama.block_count", 1u32);
    w.add(
        "tokenizer.ggml.tokens",
        vec!["a".to_string(), "bc".into(), "<s>".into()],
    );
    w.add(
        "n",
        vec![Array::I32(vec![1, 2]), Array::String(vec!["x"].into())],
    );
    w.add("f", 0.5f32).add("b", true);
    w.add_tensor("w4", DType::Q4_0, vec![32, 2], q4).unwrap();
    w.add_tensor(
        "norm",
        DType::F32,
        vec![3],
        bytemuck::cast_slice(&x[..3]).to_vec(),
    )
    .unwrap();
    w.add_tensor("wk", DType::Q4_K, vec![256], qk).unwrap();
    let p = tmp_path();
    w.write(&p).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).ok();
    b
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let full = small_valid();
    let g = open_bytes(&full).unwrap();
    // Only the zero padding after the last tensor may be cut without losing anything.
    let data_end = g.tensors.iter().map(|t| match &t.data {
        cria_core::Bytes::Mapped { offset, len, .. } => offset + len,
        _ => unreachable!(),
    });
    let data_end = data_end.max().unwrap();
    assert!(
        data_end < full.len(),
        "the writer pads the last tensor like ggml does"
    );
    for n in 0..full.len() {
        match open_bytes(&full[..n]) {
            Err(_) => assert!(
                n < data_end,
                "truncation to {n} bytes (trailing padding only) was refused"
            ),
            Ok(t) => {
                assert!(
                    n >= data_end,
                    "truncated to {n} of {} bytes and still accepted",
                    full.len()
                );
                assert_eq!(t.tensors.len(), g.tensors.len());
                for (a, b) in t.tensors.iter().zip(&g.tensors) {
                    assert_eq!(a.bytes(), b.bytes());
                }
            }
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut v = small_valid();
    for magic in [b"GGUG", b"\0\0\0\0", b"FUGG", b"ggml"] {
        v[..4].copy_from_slice(magic);
        expect_err(&v, "magic");
    }
    v[..4].copy_from_slice(b"GGUF");
    v[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(expect_err(&v, "version 1"), Error::Unsupported(_)));
    for (ver, want) in [
        (0u32, "version 0"),
        (4, "version 4"),
        (99, "version 99"),
        (u32::MAX, "version"),
        (3 << 24, "big-endian"),
    ] {
        v[4..8].copy_from_slice(&ver.to_le_bytes());
        expect_err(&v, want);
    }
    v[4..8].copy_from_slice(&2u32.to_le_bytes()); // v2 has the same layout as v3
    open_bytes(&v).unwrap();
    expect_err(b"GGU", "too short");
    expect_err(b"", "too short");
}

#[test]
fn absurd_counts_fail_fast() {
    let huge = 1u64 << 62;
    expect_err(&H::new(3, huge, 0).0, "tensor count");
    expect_err(&H::new(3, 0, huge).0, "metadata count");
    expect_err(&H::new(3, u64::MAX, u64::MAX).0, "count");
    // A key whose length is absurd.
    let mut h = H::new(3, 0, 1);
    h.u64(huge).0.extend_from_slice(&[0u8; 64]);
    expect_err(&h.0, "string length");
    // Arrays of every element type with absurd lengths (nested: each element an array).
    for elem in 0..=12u32 {
        let mut h = H::new(3, 0, 1);
        h.str(b"k").u32(9).u32(elem).u64(huge);
        h.0.extend_from_slice(&[0u8; 64]);
        expect_err(&h.0, "array length");
    }
    // A string array whose strings claim absurd lengths.
    let mut h = H::new(3, 0, 1);
    h.str(b"k")
        .u32(9)
        .u32(8)
        .u64(2)
        .u64(huge)
        .0
        .extend_from_slice(&[0u8; 64]);
    expect_err(&h.0, "string length");
    // A tensor name that is absurd.
    let mut h = H::new(3, 1, 0);
    h.u64(huge).0.extend_from_slice(&[0u8; 64]);
    expect_err(&h.0, "string length");
}

#[test]
fn bad_metadata() {
    for (ty, want) in [(13u32, "unknown metadata value type 13"), (99, "type 99")] {
        let mut h = H::new(3, 0, 1);
        h.str(b"k").u32(ty).u64(0);
        expect_err(&h.0, want);
    }
    let mut h = H::new(3, 0, 1);
    h.str(b"k").u32(7).0.push(2);
    expect_err(&h.0, "bool value 2");
    let mut h = H::new(3, 0, 1);
    h.str(b"k")
        .u32(9)
        .u32(7)
        .u64(2)
        .0
        .extend_from_slice(&[1, 7]);
    expect_err(&h.0, "bool array element 7");
    let mut h = H::new(3, 0, 1);
    h.str(b"k").u32(9).u32(13).u64(0);
    expect_err(&h.0, "unknown array element type");
    // Arrays nested 12 deep.
    let mut h = H::new(3, 0, 1);
    h.str(b"k").u32(9);
    for _ in 0..12 {
        h.u32(9).u64(1);
    }
    h.u32(0).u64(0);
    expect_err(&h.0, "nested too deeply");
    // Duplicate keys.
    let mut h = H::new(3, 0, 2);
    h.kv_u32("a", 1).kv_u32("a", 2);
    expect_err(&h.0, "duplicate metadata key a");
    // Invalid UTF-8 in a key is shown, not refused (as gguf-py does).
    let mut h = H::new(3, 0, 1);
    h.str(b"bad\xff").u32(4).u32(1);
    let g = open_bytes(&h.0).unwrap();
    assert_eq!(g.metadata[0].0, "bad\u{fffd}");
}

#[test]
fn bad_alignment() {
    for (a, ok) in [
        (0u32, false),
        (3, false),
        (48, false),
        (1 << 30, false),
        (1, true),
        (64, true),
    ] {
        let mut h = H::new(3, 1, 1);
        h.kv_u32("general.alignment", a).tensor("t", &[4], 0, 0);
        let b = h.data(if ok { a as usize } else { 32 }, 16);
        match open_bytes(&b) {
            Ok(_) => assert!(ok, "alignment {a} accepted"),
            Err(e) => {
                assert!(!ok, "alignment {a} refused: {e}");
                assert!(e.to_string().contains("general.alignment"), "{e}");
            }
        }
    }
    // The wrong type for the alignment.
    let mut h = H::new(3, 0, 1);
    h.str(b"general.alignment").u32(8).str(b"32");
    expect_err(&h.0, "general.alignment");
}

#[test]
fn bad_tensor_infos() {
    let one = |ne: &[u64], ty: u32, off: u64, data: usize| {
        let mut h = H::new(3, 1, 0);
        h.tensor("t", ne, ty, off);
        h.data(32, data)
    };
    open_bytes(&one(&[4, 2], 0, 0, 32)).unwrap(); // the baseline is fine
    expect_err(&one(&[], 0, 0, 32), "0 dimensions");
    expect_err(&one(&[1, 1, 1, 1, 1], 0, 0, 32), "5 dimensions");
    expect_err(&one(&[1 << 40, 1 << 40], 0, 0, 32), "overflows");
    expect_err(
        &one(&[1 << 62, 1 << 62, 1 << 62, 1 << 62], 0, 0, 32),
        "overflows",
    );
    expect_err(&one(&[u64::MAX], 0, 0, 32), "dimension");
    expect_err(&one(&[1 << 61], 0, 0, 32), "past the end"); // bytes_for: 2^63 bytes
    expect_err(&one(&[1 << 62], 0, 0, 32), "overflow"); // 2^62 f32 = 2^64 bytes
    for ty in [4u32, 5, 31, 999, u32::MAX] {
        assert!(matches!(
            expect_err(&one(&[4], ty, 0, 32), "unknown type id"),
            Error::Unsupported(_)
        ));
    }
    expect_err(&one(&[4, 2], 0, 32, 32), "past the end");
    expect_err(&one(&[4, 2], 0, 0, 31), "past the end");
    expect_err(&one(&[4], 0, u64::MAX - 31, 32), "past the end");
    expect_err(&one(&[4], 0, 16, 64), "not aligned");
    expect_err(&one(&[4], 0, 1, 64), "not aligned");
    expect_err(&one(&[16], DType::Q4_0.ggml_id(), 0, 32), "block size");
    // Two tensors with one name.
    let mut h = H::new(3, 2, 0);
    h.tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32);
    expect_err(&h.data(32, 64), "duplicate tensor name t");
    // A zero-sized tensor at the very end is fine.
    let g = open_bytes(&one(&[0, 3], 0, 0, 0)).unwrap();
    assert_eq!(g.tensors[0].bytes().len(), 0);
}

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_mutations_never_panic() {
    let base = small_valid();
    let header_len = {
        let g = open_bytes(&base).unwrap();
        g.tensors
            .iter()
            .map(|t| match &t.data {
                cria_core::Bytes::Mapped { offset, .. } => *offset,
                _ => unreachable!(),
            })
            .min()
            .unwrap()
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    let p = tmp_path();
    for _ in 0..2000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly the header: the tensor data is opaque to the reader.
            let i = if rng.below(10) < 8 {
                rng.below(header_len)
            } else {
                rng.below(b.len())
            };
            b[i] = match rng.below(4) {
                0 => b[i] ^ (1 << rng.below(8)),
                1 => 0xff,
                2 => 0,
                _ => rng.next() as u8,
            };
        }
        if rng.below(10) == 0 {
            b.truncate(rng.below(b.len()));
        }
        std::fs::write(&p, &b).unwrap();
        match GgufFile::open(&p) {
            Ok(g) => {
                ok += 1;
                for t in &g.tensors {
                    let _ = t.to_f32_vec();
                }
                for (_, v) in &g.metadata {
                    let _ = v.summary();
                }
            }
            Err(_) => err += 1,
        }
    }
    std::fs::remove_file(&p).ok();
    eprintln!("random mutations: {ok} opened, {err} refused, none panicked");
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(ok > 50 && err > 500, "{ok} opened, {err} refused");
}
