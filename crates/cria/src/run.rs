//! `cria run`: one answer, streamed to stdout, as `ollama run MODEL "prompt"` and
//! `llama-cli -m MODEL -p "prompt"` give it.
//!
//! The words after `run` are the model (the first word, when there is no -m and it names one: a
//! .gguf path, a folder, hf:ORG/REPO[:FILE] or a short name) and then the prompt, joined with
//! spaces. The prompt can instead come from -p, -f FILE, -f - or piped stdin. Every flag is
//! checked before the model loads; after the answer, stderr says why it stopped unless the model
//! ended it.

use crate::constraint_args::ConstraintArgs;
use crate::sample_args::SamplerArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use cria_engine::generate::StopReason;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// The most prompt text read from a file or stdin (far beyond any context: a bound, not a limit
/// anyone should meet).
pub const MAX_PROMPT_BYTES: u64 = 64 << 20;

#[derive(Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub m: crate::ModelArgs,
    /// The model (when there is no -m and the first word names one: a .gguf file, a folder,
    /// hf:ORG/REPO[:FILE] or a short name such as smollm2), then the prompt: the other words,
    /// joined with spaces.
    #[arg(value_name = "[MODEL] PROMPT")]
    words: Vec<String>,
    /// The prompt (instead of words after the model).
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    prompt: Option<String>,
    /// Read the prompt from this file, byte for byte; "-" reads stdin. Without a prompt, piped
    /// stdin is read too.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    pub gen: GenArgs,
    #[command(flatten)]
    sampling: SamplerArgs,
    #[command(flatten)]
    constraint: ConstraintArgs,
    #[command(flatten)]
    spec: crate::spec_args::SpecArgs,
    /// Go on past the end-of-generation token (until -n or a full context).
    #[arg(long = "ignore-eos")]
    ignore_eos: bool,
    /// A system message for the chat template.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

/// How much to generate and in what context: flags shared by `run` and `chat`.
#[derive(Args, Clone, Copy)]
pub struct GenArgs {
    /// Most tokens per answer; -1: no limit (until the model ends its answer or the context is
    /// full).
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "max-tokens",
        value_name = "N",
        default_value = "-1",
        value_parser = parse_n_predict,
        allow_negative_numbers = true
    )]
    pub max_tokens: usize,
    /// Context size in tokens (default: the model's training context, as far as the KV cache
    /// fits in half the free memory).
    #[arg(short = 'c', long = "ctx-size", value_name = "N", value_parser = at_least_one)]
    pub ctx_size: Option<usize>,
    /// Tokens per prompt-processing batch.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "N",
        default_value_t = 512,
        value_parser = at_least_one
    )]
    pub batch: usize,
}

/// clap value parser of -n/--n-predict: a count, or -1 for no limit (usize::MAX).
pub fn parse_n_predict(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        Ok(-1) => Ok(usize::MAX),
        Ok(n) if n >= 0 => Ok(n as usize),
        _ => Err("expected a token count, or -1 for no limit".into()),
    }
}

/// clap value parser of sizes that cannot be 0 (--ctx-size, --batch-size).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of at least 1".into()),
    }
}

/// The most threads -t takes (each is an OS thread spawned at load).
pub const MAX_THREADS: usize = 512;

/// clap value parser of thread counts (-t): 1 to MAX_THREADS.
pub fn thread_count(s: &str) -> Result<usize, String> {
    match at_least_one(s)? {
        n if n > MAX_THREADS => Err(format!("at most {MAX_THREADS} threads")),
        n => Ok(n),
    }
}

/// Does a word on the command line name a model rather than start the prompt? A .gguf path
/// (existing or not, so a typo is an error about the file), a GGUF file by its magic, an
/// existing folder, an hf: spec or a short name.
pub fn names_model(word: &str) -> bool {
    let p = Path::new(word);
    word.starts_with("hf:")
        || crate::fetch::known_model(word).is_some()
        || crate::fetch::has_gguf_extension(p)
        || p.is_dir()
        || (p.is_file() && crate::fetch::is_gguf(p).unwrap_or(false))
}

/// The model spec and the prompt words: -m wins, else a first word that names a model.
fn split_model<'a>(m: Option<&'a str>, words: &'a [String]) -> (Option<&'a str>, &'a [String]) {
    match (m, words.split_first()) {
        (Some(m), _) => (Some(m), words),
        (None, Some((first, rest))) if names_model(first) => (Some(first), rest),
        (None, _) => (None, words),
    }
}

/// All of `r` as UTF-8 text, at most MAX_PROMPT_BYTES (a prompt, or the text of `tokenize` and
/// `logits`); `what` names the source in errors.
pub fn read_prompt(r: &mut dyn Read, what: &str) -> Result<String> {
    let mut b = Vec::new();
    r.take(MAX_PROMPT_BYTES + 1)
        .read_to_end(&mut b)
        .with_context(|| format!("reading {what}"))?;
    if b.len() as u64 > MAX_PROMPT_BYTES {
        bail!("{what} is over {} MiB", MAX_PROMPT_BYTES >> 20);
    }
    String::from_utf8(b).map_err(|e| {
        anyhow::anyhow!(
            "{what}: not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

const NO_PROMPT: &str =
    "no prompt: give it after the model (cria run MODEL \"PROMPT\"), with -p TEXT, -f FILE or on stdin";

/// The prompt from exactly one source: words, -p, -f FILE / -f -, or piped stdin.
fn prompt_text(words: &[String], p: Option<&str>, file: Option<&Path>) -> Result<String> {
    let given =
        usize::from(!words.is_empty()) + usize::from(p.is_some()) + usize::from(file.is_some());
    if given > 1 {
        bail!("give the prompt once: as words after the model, with -p TEXT or with -f FILE");
    }
    let stdin = || read_prompt(&mut std::io::stdin().lock(), "the prompt on stdin");
    let text = match (p, file) {
        (Some(p), _) => p.to_string(),
        (_, Some(f)) if f == Path::new("-") => stdin()?,
        (_, Some(f)) => {
            let mut file =
                std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?;
            read_prompt(&mut file, &f.display().to_string())?
        }
        _ if !words.is_empty() => words.join(" "),
        _ if !std::io::stdin().is_terminal() => match stdin()? {
            t if t.is_empty() => bail!("{NO_PROMPT} (stdin was empty)"),
            t => t,
        },
        _ => bail!("{NO_PROMPT}"),
    };
    if text.is_empty() {
        bail!("the prompt is empty");
    }
    Ok(text)
}

pub fn run(a: &RunArgs) -> Result<()> {
    // Everything the flags say is checked before the model loads.
    let (spec, words) = split_model(a.m.model.as_deref(), &a.words);
    let text = prompt_text(words, a.prompt.as_deref(), a.file.as_deref())?;
    let cfg = a.sampling.config()?;
    let grammar = a.constraint.load()?;
    let what = a.constraint.output_kind();
    a.spec.config()?;

    let l = crate::load::model(spec, &a.m)?;
    let draft = crate::spec_args::load_draft(&a.spec, &a.m)?;
    let tok = &l.tok;
    let prompt = if a.raw || tok.chat_template().is_none() {
        if !a.raw {
            eprintln!("note: the model has no chat template; using the prompt as plain text");
        }
        tok.encode(&text, true, false)
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(cria_engine::template::Message::new("system", s.clone()));
        }
        msgs.push(cria_engine::template::Message::new("user", text));
        cria_engine::render_chat(tok, &msgs, true, None)?.1
    };
    let ctx = crate::load::ctx_size(&l, a.gen.ctx_size)?;
    let matcher = crate::constraint_args::matcher(&l.tok, grammar)?.map(Into::into);
    let sampler =
        crate::sample_args::build_sampler(cfg.clone(), l.model.config.vocab_size, &l.tok)?;
    let params = cria_engine::scheduler::GenParams {
        sampler: cfg,
        max_tokens: a.gen.max_tokens,
        stop: a.sampling.stop.clone(),
        matcher,
        logprobs: None,
        ignore_eos: a.ignore_eos,
    };
    let mut one = crate::terminal::one_slot(&l, ctx, a.gen.batch)?;
    crate::spec_args::enable(&a.spec, &mut one, draft.as_ref())?;
    let (done, text) = crate::terminal::answer(&mut one, &l.lora, prompt, params, sampler, None);
    text?;
    writeln!(std::io::stdout())?;
    let done = done.context("the answer ended without a result")?;
    let st = done.stats;
    let complete = done.grammar.as_ref().map(|g| g.matcher().is_complete());
    if let Some(why) = stop_message(st.stop, a.gen.max_tokens, ctx, complete, what) {
        eprintln!("{why}");
    }
    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    eprintln!(
        "load {:.0} ms | prompt {} tokens, {:.1} t/s | generation {} tokens, {:.1} t/s{} | {}",
        l.load_time.as_secs_f64() * 1e3,
        st.prompt_tokens,
        rate(st.prompt_tokens, st.prompt_time),
        st.gen_tokens,
        rate(st.gen_tokens, st.gen_time),
        crate::spec_args::summary(st.spec, st.gen_tokens),
        cria_kernels::Backend::name(&l.backend)
    );
    Ok(())
}

/// Why the answer ended, for stderr, when it was not the model's end-of-generation token.
/// `complete`: under a grammar, whether the output is complete; `what`: what the grammar makes
/// ("the JSON", "the grammar's output").
fn stop_message(
    stop: StopReason,
    max_tokens: usize,
    ctx: usize,
    complete: Option<bool>,
    what: &str,
) -> Option<String> {
    let (why, cut) = match stop {
        StopReason::Eog => return None,
        StopReason::GrammarDone => ("the grammar is complete".to_string(), ""),
        StopReason::MaxTokens => (
            format!("the token limit (-n {max_tokens}) was reached"),
            "the token limit",
        ),
        StopReason::ContextFull => (
            format!("the context of {ctx} tokens is full"),
            "the full context",
        ),
        StopReason::StopString => ("a stop string appeared".to_string(), "the stop string"),
        StopReason::GrammarStuck => (
            "the grammar allows no token of this model here".to_string(),
            "",
        ),
        StopReason::Cancelled => ("cancelled".to_string(), "cancelling"),
    };
    Some(match complete {
        Some(false) if cut.is_empty() => format!("[stopped: {why}; output incomplete]"),
        Some(false) => format!("[stopped: {why}; output incomplete: {cut} cut {what}]"),
        _ => format!("[stopped: {why}]"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_predict_values() {
        assert_eq!(parse_n_predict("-1"), Ok(usize::MAX));
        assert_eq!(parse_n_predict("0"), Ok(0));
        assert_eq!(parse_n_predict("42"), Ok(42));
        assert!(parse_n_predict("-2").is_err());
        assert!(parse_n_predict("abc").is_err());
        assert!(at_least_one("0").is_err());
        assert_eq!(at_least_one("512"), Ok(512));
        assert!(thread_count("513").is_err() && thread_count("0").is_err());
    }

    #[test]
    fn model_word_then_prompt() {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let words = w(&["smollm2", "why", "is", "the", "sky", "blue?"]);
        let (m, p) = split_model(None, &words);
        assert_eq!(m, Some("smollm2"));
        assert_eq!(p.join(" "), "why is the sky blue?");
        // With -m every word is prompt.
        let (m, p) = split_model(Some("x.gguf"), &words);
        assert_eq!((m, p.len()), (Some("x.gguf"), 6));
        // A first word that names no model starts the prompt (the default model runs).
        let words = w(&["hello", "there"]);
        assert_eq!(split_model(None, &words), (None, &words[..]));
        for model in ["hf:org/repo:f.gguf", "missing.GGUF", "."] {
            assert!(names_model(model), "{model}");
        }
    }

    #[test]
    fn stop_messages() {
        let m = |s, c| stop_message(s, 8, 512, c, "the JSON");
        assert_eq!(m(StopReason::Eog, None), None);
        assert_eq!(
            m(StopReason::MaxTokens, None).unwrap(),
            "[stopped: the token limit (-n 8) was reached]"
        );
        assert_eq!(
            m(StopReason::MaxTokens, Some(false)).unwrap(),
            "[stopped: the token limit (-n 8) was reached; output incomplete: the token limit cut the JSON]"
        );
        assert_eq!(
            m(StopReason::MaxTokens, Some(true)).unwrap(),
            "[stopped: the token limit (-n 8) was reached]"
        );
        assert!(m(StopReason::ContextFull, Some(false))
            .unwrap()
            .contains("the full context cut the JSON"));
    }
}
