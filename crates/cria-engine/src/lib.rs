//! cria-engine: what sits between the model and a user: token samplers and chat templates
//! (sessions and the request scheduler come later).
//!
//! Errors: template rendering returns `cria_core::Result`, with template problems (syntax errors,
//! `raise_exception`, undefined functions) as `cria_core::Error::Msg` carrying the template's own
//! message and location.

pub mod grammar;
pub mod memory;
pub mod sampler;
pub mod stop;
pub mod template;
pub mod tools;

pub use grammar::{Grammar, GrammarError, Matcher, TokenTable};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::StopMatcher;
pub use template::{ChatTemplate, Message};
