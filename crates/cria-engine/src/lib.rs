//! cria-engine: what sits between the model and a user: model loading ([`load`]), token
//! samplers, grammars, stop strings and chat templates. The CLI and the server are fronts over it.
//!
//! Errors: template rendering returns `cria_core::Result`, with template problems (syntax errors,
//! `raise_exception`, undefined functions) as `cria_core::Error::Msg` carrying the template's own
//! message and location.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod grammar;
pub mod imatrix;
pub mod kld;
pub mod load;
pub mod lora;
pub mod memory;
pub mod sampler;
pub mod scheduler;
pub mod speculative;
pub mod stop;
pub mod template;
pub mod tools;

pub use grammar::{Grammar, GrammarError, Matcher, TokenTable};
pub use load::{
    load, load_on, load_tokenizer_only, load_with_lora, load_with_lora_on, render_chat,
    LoadOptions, LoadedModel, LoraOptions,
};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::StopMatcher;
pub use template::{ChatTemplate, Message};
