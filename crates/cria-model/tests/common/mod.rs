//! Test models shared by the integration tests.

use cria_core::gguf::{GgufFile, GgufWriter};
use cria_core::{quant, DType};
use std::path::{Path, PathBuf};

/// The tiny LLaMA-2 fixture (F32).
pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama2/model.gguf")
}

/// The tiny model with its matrices re-quantized (rows of 64 take block types; ffn_down's rows
/// of 172 become F16).
pub fn quantized_copy(dir: &Path) -> PathBuf {
    let g = GgufFile::open(tiny()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    let mut datas = Vec::new();
    for t in &g.tensors {
        let dtype = match t.name.as_str() {
            n if t.ne.len() < 2 || n.ends_with("norm.weight") => t.dtype,
            "token_embd.weight" => DType::Q8_0,
            "output.weight" => DType::Q4_1,
            n if n.contains("ffn_down") => DType::F16,
            n if n.contains("ffn_") => DType::Q8_0,
            _ => DType::Q4_0,
        };
        let v = t.to_f32_vec().unwrap();
        let mut bytes = vec![0u8; dtype.bytes_for(v.len()).unwrap()];
        quant::quantize(dtype, &v, &mut bytes).unwrap();
        datas.push((t.name.clone(), dtype, t.ne.clone(), bytes));
    }
    for (name, dtype, ne, bytes) in datas {
        w.add_tensor(name, dtype, ne, bytes).unwrap();
    }
    let p = dir.join("tiny-mixed.gguf");
    w.write(&p).unwrap();
    p
}
