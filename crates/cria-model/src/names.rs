//! The one table of tensor names: cria's weights carry GGUF names; Hugging Face names are
//! translated here and nowhere else. `{}` stands for the layer index.
//!
//! Q/K layout: llama.cpp's converter permutes the rows of attn_q/attn_k (and their biases) from HF's
//! half-split RoPE layout into interleaved pairs. cria does not undo that by copying rows; the
//! config's `rope_interleaved` flag says which pairing each file's rows use (see config.rs).

/// (GGUF name, Hugging Face name)
pub const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per layer: (GGUF name with `{}`, HF name with `{}`)
pub const LAYER: &[(&str, &str)] = &[
    (
        "blk.{}.attn_norm.weight",
        "model.layers.{}.input_layernorm.weight",
    ),
    (
        "blk.{}.attn_q.weight",
        "model.layers.{}.self_attn.q_proj.weight",
    ),
    (
        "blk.{}.attn_k.weight",
        "model.layers.{}.self_attn.k_proj.weight",
    ),
    (
        "blk.{}.attn_v.weight",
        "model.layers.{}.self_attn.v_proj.weight",
    ),
    (
        "blk.{}.attn_output.weight",
        "model.layers.{}.self_attn.o_proj.weight",
    ),
    (
        "blk.{}.attn_q.bias",
        "model.layers.{}.self_attn.q_proj.bias",
    ),
    (
        "blk.{}.attn_k.bias",
        "model.layers.{}.self_attn.k_proj.bias",
    ),
    (
        "blk.{}.attn_v.bias",
        "model.layers.{}.self_attn.v_proj.bias",
    ),
    (
        "blk.{}.attn_output.bias",
        "model.layers.{}.self_attn.o_proj.bias",
    ),
    (
        "blk.{}.ffn_norm.weight",
        "model.layers.{}.post_attention_layernorm.weight",
    ),
    (
        "blk.{}.ffn_gate.weight",
        "model.layers.{}.mlp.gate_proj.weight",
    ),
    ("blk.{}.ffn_up.weight", "model.layers.{}.mlp.up_proj.weight"),
    (
        "blk.{}.ffn_down.weight",
        "model.layers.{}.mlp.down_proj.weight",
    ),
    ("blk.{}.ffn_gate.bias", "model.layers.{}.mlp.gate_proj.bias"),
    ("blk.{}.ffn_up.bias", "model.layers.{}.mlp.up_proj.bias"),
    ("blk.{}.ffn_down.bias", "model.layers.{}.mlp.down_proj.bias"),
];

/// The GGUF name of an HF tensor name, if it is one cria uses.
pub fn hf_to_gguf(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    LAYER
        .iter()
        .find(|(_, h)| h.strip_prefix("model.layers.{}.") == Some(tail))
        .map(|(g, _)| g.replace("{}", &i.to_string()))
}

pub fn layer_name(pattern: &str, i: usize) -> String {
    pattern.replace("{}", &i.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn translates() {
        assert_eq!(
            hf_to_gguf("model.layers.12.self_attn.k_proj.weight").as_deref(),
            Some("blk.12.attn_k.weight")
        );
        assert_eq!(
            hf_to_gguf("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(
            hf_to_gguf("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
    }
}
