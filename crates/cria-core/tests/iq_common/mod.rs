//! Reader of tests/fixtures/iq_dequant.bin (made by tests/gen_iq_fixtures.py), shared by
//! cria-core's iq_fixtures.rs and cria-kernels' iq.rs (through `#[path]`).

use cria_core::DType;

/// (type, raw blocks, llama.cpp's dequantized values) per record: u32 len + name, u32 ggml id,
/// u32 n_blocks, the blocks, n_blocks * 256 f32.
pub fn iq_records() -> Vec<(DType, Vec<u8>, Vec<f32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cria-core/tests/fixtures/iq_dequant.bin"
    );
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run crates/cria-core/tests/gen_iq_fixtures.py)"));
    fn take<'a>(p: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (a, b) = p.split_at(n);
        *p = b;
        a
    }
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let mut p = &data[..];
    let mut out = Vec::new();
    while !p.is_empty() {
        let n = u32_of(take(&mut p, 4)) as usize;
        let name = std::str::from_utf8(take(&mut p, n)).unwrap().to_string();
        let (id, nb) = (u32_of(take(&mut p, 4)), u32_of(take(&mut p, 4)) as usize);
        let t = DType::from_ggml(id).unwrap();
        assert_eq!(t.name(), name);
        let raw = take(&mut p, nb * t.type_size()).to_vec();
        let want = take(&mut p, nb * 1024)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push((t, raw, want));
    }
    out
}
