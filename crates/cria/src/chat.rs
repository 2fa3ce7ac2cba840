//! `cria chat`: an interactive conversation, as `ollama run` offers it.
//!
//! Each turn renders the whole conversation with the model's chat template and hands it to the
//! engine's scheduler (one slot, kept between turns), which keeps the longest prefix it already holds: only the new user turn (and
//! whatever the template re-renders differently from the sampled answer) is evaluated. When a
//! turn would not fit the context, cria says so; with `--context-shift` it drops the oldest turns
//! (never the system message) and says that too. Nothing is ever truncated silently.
//!
//! Input: a line editor with history (arrow keys; saved in the cria cache folder), `"""` opens and
//! closes a multi-line message, a line ending in `\` continues on the next. Ctrl-C stops the
//! current answer (or clears the line), Ctrl-D leaves.

use crate::sample_args::SamplerArgs;
use crate::terminal::OneSlot;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use cria_engine::generate::{GenStats, StopReason};
use cria_engine::grammar::Matcher;
use cria_engine::sampler::{Sampler, SamplerConfig};
use cria_engine::template::Message;
use cria_engine::LoadedModel as Loaded;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    m: crate::ModelArgs,
    /// The model, as for -m: cria chat smollm2, as ollama run takes it.
    #[arg(id = "model_word", value_name = "MODEL")]
    model: Option<String>,
    /// The system message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplerArgs,
    #[command(flatten)]
    constraint: crate::constraint_args::ConstraintArgs,
    #[command(flatten)]
    gen: crate::run::GenArgs,
    #[command(flatten)]
    spec: crate::spec_args::SpecArgs,
    /// When the conversation outgrows the context, drop the oldest turns (never the system
    /// message) instead of stopping.
    #[arg(long = "context-shift")]
    context_shift: bool,
    /// Start from a conversation saved with /save.
    #[arg(long)]
    load: Option<PathBuf>,
    /// Do not read or write the input history file (arrow keys still recall this session's lines).
    #[arg(long = "no-history")]
    no_history: bool,
}

const HELP: &str = "\
Commands:
  /help                 this list
  /clear                forget the conversation (the system message stays)
  /system TEXT          set the system message (/system alone removes it)
  /set NAME VALUE       change a sampler option, e.g. /set temperature 0.7 (/set alone lists them)
  /save FILE            write the conversation as JSON
  /load FILE            read a conversation written by /save
  /stats                tokens, context used, speed
  /bye                  leave (or Ctrl-D)
Input: \"\"\" starts and ends a multi-line message; a line ending in \\ continues.
Ctrl-C stops an answer; Ctrl-D leaves.";

/// The conversation and what the last turn measured.
struct Chat {
    messages: Vec<Message>,
    cfg: SamplerConfig,
    sampler: Sampler,
    /// The grammar the answers follow (reset for each).
    grammar: Option<Matcher>,
    vocab: usize,
    last: Option<GenStats>,
}

impl Chat {
    fn system(&self) -> Option<&str> {
        self.messages
            .first()
            .filter(|m| m.role == "system")
            .map(|m| m.text())
    }

    fn set_system(&mut self, text: Option<String>) {
        if self.system().is_some() {
            self.messages.remove(0);
        }
        if let Some(t) = text {
            self.messages.insert(0, Message::new("system", t));
        }
    }

    fn clear(&mut self) {
        let sys = self.system().map(str::to_string);
        self.messages.clear();
        self.set_system(sys);
    }

    /// A new sampler configuration (kept only if its sampler builds).
    fn set_config(&mut self, l: &Loaded, cfg: SamplerConfig) -> Result<()> {
        self.sampler = crate::sample_args::build_sampler(cfg.clone(), self.vocab, &l.tok)?;
        self.cfg = cfg;
        Ok(())
    }
}

/// A conversation file as /save writes it: `{"messages": [{"role": ..., "content": ...}, ...]}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    messages: Vec<Message>,
}

fn save(path: &Path, messages: &[Message]) -> Result<()> {
    let text = serde_json::to_string_pretty(&Saved {
        messages: messages.to_vec(),
    })?;
    // Written beside the target and renamed: an existing file is never left half-written.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load_conversation(path: &Path) -> Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let saved: Saved = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a saved conversation (expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}})",
            path.display()
        )
    })?;
    for (i, m) in saved.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            bail!(
                "{}: message {i} has an unknown role {:?}",
                path.display(),
                m.role
            );
        }
        if m.role == "system" && i != 0 {
            bail!(
                "{}: only the first message may be a system message",
                path.display()
            );
        }
    }
    Ok(saved.messages)
}

/// Where the line editor keeps its history.
fn history_path() -> PathBuf {
    crate::fetch::cria_cache_dir().join("chat_history")
}

pub fn run(a: &ChatArgs) -> Result<()> {
    // The flags and files first: a mistake there is reported before the model loads.
    let spec = match (&a.m.model, &a.model) {
        (Some(_), Some(_)) => bail!("give the model once: with -m or as the first word"),
        (m, p) => m.as_deref().or(p.as_deref()),
    };
    if let Some(n) = a.gen.ctx_size.filter(|&n| n < 16) {
        bail!("--ctx-size {n} is too small for a conversation (16 at least)");
    }
    let cfg = a.sampling.config()?;
    let grammar = a.constraint.load()?;
    let loaded = a.load.as_deref().map(load_conversation).transpose()?;
    a.spec.config()?;
    let l = crate::load::model(spec, &a.m)?;
    let draft = crate::spec_args::load_draft(&a.spec, &a.m)?;
    let ctx_size = crate::load::ctx_size(&l, a.gen.ctx_size)?;
    if ctx_size < 16 {
        bail!("--ctx-size {ctx_size} is too small for a conversation");
    }
    let vocab = l.model.config.vocab_size;
    let mut chat = Chat {
        messages: loaded.unwrap_or_default(),
        sampler: crate::sample_args::build_sampler(cfg.clone(), vocab, &l.tok)?,
        grammar: crate::constraint_args::matcher(&l.tok, grammar)?,
        cfg,
        vocab,
        last: None,
    };
    if a.system.is_some() {
        chat.set_system(a.system.clone());
    }
    if l.tok.chat_template().is_none() {
        eprintln!("note: the model has no chat template; using ChatML");
    }
    let mut state = crate::terminal::one_slot(&l, ctx_size, a.gen.batch)?;
    crate::spec_args::enable(&a.spec, &mut state, draft.as_ref())?;
    eprintln!(
        "{} ({} params) | context {} tokens | {} | /help for commands, Ctrl-D to leave",
        spec.unwrap_or("default model"),
        crate::inspect::params(l.model.n_params()),
        ctx_size,
        chat.sampler.describe()
    );

    // Ctrl-C while an answer streams sets this flag; the generation loop stops at the next token.
    // While the line editor reads, the terminal is raw and Ctrl-C arrives as a key instead.
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        ctrlc::set_handler(move || c.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }

    let mut ed = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let hist = history_path();
    if !a.no_history {
        let _ = ed.load_history(&hist);
    }
    loop {
        let Some(input) = read_message(&mut ed)? else {
            break;
        };
        let line = input.trim();
        if line.is_empty() {
            continue;
        }
        let _ = ed.add_history_entry(line);
        if line.starts_with('/') && !line.starts_with("//") {
            match command(line, &mut chat, &mut state, &l) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        chat.messages.push(Message::new("user", input.clone()));
        match turn(&mut chat, &mut state, &l, a, &cancel) {
            Ok(()) => {}
            Err(e) => {
                chat.messages.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    if !a.no_history {
        if let Some(dir) = hist.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ed.save_history(&hist);
    }
    Ok(())
}

/// One message from the user: a line, a `"""` block or `\`-continued lines. None on Ctrl-D.
fn read_message(ed: &mut rustyline::DefaultEditor) -> Result<Option<String>> {
    use rustyline::error::ReadlineError;
    let mut buf = String::new();
    let mut block = false;
    loop {
        let prompt = if buf.is_empty() && !block {
            ">>> "
        } else {
            "... "
        };
        match ed.readline(prompt) {
            Ok(line) => {
                if block {
                    if let Some(head) = line.strip_suffix("\"\"\"") {
                        buf.push_str(head);
                        return Ok(Some(buf));
                    }
                    buf.push_str(&line);
                    buf.push('\n');
                } else if buf.is_empty() && line.trim_start().starts_with("\"\"\"") {
                    let rest = line.trim_start().trim_start_matches("\"\"\"");
                    if let Some(one) = rest.strip_suffix("\"\"\"") {
                        return Ok(Some(one.to_string()));
                    }
                    block = true;
                    if !rest.is_empty() {
                        buf.push_str(rest);
                        buf.push('\n');
                    }
                } else if let Some(head) = line.strip_suffix('\\') {
                    buf.push_str(head);
                    buf.push('\n');
                } else {
                    buf.push_str(&line);
                    return Ok(Some(buf));
                }
            }
            Err(ReadlineError::Interrupted) => {
                if buf.is_empty() && !block {
                    eprintln!("(Ctrl-D or /bye to leave)");
                }
                buf.clear();
                block = false;
            }
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e).context("reading the input"),
        }
    }
}

/// Renders the conversation, makes it fit (or says it cannot), streams the answer and records it.
fn turn(
    chat: &mut Chat,
    state: &mut OneSlot,
    l: &Loaded,
    a: &ChatArgs,
    cancel: &Arc<AtomicBool>,
) -> Result<()> {
    let ctx = state.ctx_size();
    // Room the answer needs at least; without --max-tokens a turn may use the rest.
    let wanted = if a.gen.max_tokens == usize::MAX {
        64
    } else {
        a.gen.max_tokens
    };
    let reserve = wanted.min(ctx / 4).max(1);
    let mut dropped = 0;
    let prompt = loop {
        let (_, ids) = cria_engine::render_chat(&l.tok, &chat.messages, true, None)?;
        if ids.len() + reserve <= ctx {
            break ids;
        }
        let first = usize::from(chat.system().is_some());
        // Oldest turns go first; the message just typed must stay.
        if a.context_shift && chat.messages.len() > first + 1 {
            chat.messages.remove(first);
            dropped += 1;
            continue;
        }
        if a.context_shift {
            bail!(
                "this message alone is {} tokens and does not fit the context of {ctx} with room for an answer",
                ids.len()
            );
        }
        bail!(
            "the conversation is {} tokens and the context holds {ctx} (with {reserve} kept for the answer): \
/clear to start over, or restart with --context-shift to drop the oldest turns, or a larger --ctx-size",
            ids.len()
        );
    };
    if dropped > 0 {
        eprintln!(
            "[context shift: dropped the {dropped} oldest message{} to make room]",
            if dropped == 1 { "" } else { "s" }
        );
    }
    cancel.store(false, Ordering::SeqCst);
    let matcher = chat.grammar.take().map(|mut m| {
        m.reset();
        m.into()
    });
    let params = cria_engine::scheduler::GenParams {
        sampler: chat.cfg.clone(),
        max_tokens: a.gen.max_tokens,
        stop: a.sampling.stop.clone(),
        matcher,
        logprobs: None,
        ignore_eos: false,
    };
    // The chat's sampler (and its random stream) goes on from answer to answer: it is lent to
    // the job and comes back with its end.
    let fresh = crate::sample_args::build_sampler(chat.cfg.clone(), chat.vocab, &l.tok)?;
    let sampler = std::mem::replace(&mut chat.sampler, fresh);
    let (done, answer) = crate::terminal::answer(
        state,
        &l.lora,
        prompt,
        params,
        sampler,
        Some(cancel.clone()),
    );
    let mut done = done.context("the answer ended without a result");
    if let Ok(d) = &mut done {
        if let Some(s) = d.sampler.take() {
            chat.sampler = s;
        }
        chat.grammar = d.grammar.take().map(|m| m.into_matcher());
    }
    let answer = answer?;
    let st = done?.stats;
    writeln!(std::io::stdout())?;
    match st.stop {
        StopReason::Cancelled => eprintln!("[stopped]"),
        StopReason::ContextFull => eprintln!(
            "[the context of {ctx} tokens is full: the answer was cut; /clear to start over{}]",
            if a.context_shift {
                ", or go on: the oldest turns will be dropped"
            } else {
                ", or restart with --context-shift"
            }
        ),
        StopReason::MaxTokens => eprintln!(
            "[stopped: the token limit (-n {}) was reached]",
            a.gen.max_tokens
        ),
        StopReason::GrammarStuck => {
            eprintln!("[stopped: the grammar allows no token of this model here]")
        }
        StopReason::Eog | StopReason::StopString | StopReason::GrammarDone => {}
    }
    chat.messages.push(Message::new("assistant", answer));
    chat.last = Some(st);
    Ok(())
}

/// A slash command. Ok(true) means leave.
fn command(line: &str, chat: &mut Chat, state: &mut OneSlot, l: &Loaded) -> Result<bool> {
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    match cmd {
        "/bye" | "/exit" | "/quit" => return Ok(true),
        "/help" | "/?" => println!("{HELP}"),
        "/clear" => {
            chat.clear();
            state.clear();
            chat.sampler.reset();
            println!("Cleared the conversation.");
        }
        "/system" => {
            chat.set_system((!rest.is_empty()).then(|| rest.to_string()));
            println!(
                "{}",
                if rest.is_empty() {
                    "Removed the system message."
                } else {
                    "Set the system message."
                }
            );
        }
        "/set" => {
            if rest.is_empty() {
                println!("{}", chat.cfg.summary());
                return Ok(false);
            }
            let (name, value) = rest
                .split_once(char::is_whitespace)
                .context("usage: /set NAME VALUE, e.g. /set temperature 0.7")?;
            let mut cfg = chat.cfg.clone();
            cfg.set(name.trim(), value.trim())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chat.set_config(l, cfg)?;
            println!("Set {} = {}.", name.trim(), value.trim());
        }
        "/save" => {
            if rest.is_empty() {
                bail!("usage: /save FILE");
            }
            save(Path::new(rest), &chat.messages)?;
            println!("Saved {} messages to {rest}.", chat.messages.len());
        }
        "/load" => {
            if rest.is_empty() {
                bail!("usage: /load FILE");
            }
            chat.messages = load_conversation(Path::new(rest))?;
            println!("Loaded {} messages from {rest}.", chat.messages.len());
        }
        "/stats" => {
            let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
            println!(
                "context: {} of {} tokens used | {} messages",
                state.cached(),
                state.ctx_size(),
                chat.messages.len()
            );
            if let Some(st) = &chat.last {
                println!(
                    "last answer: prompt {} new tokens ({} reused from the cache) at {:.1} t/s | {} tokens generated at {:.1} t/s{}",
                    st.prompt_tokens,
                    st.reused_tokens,
                    rate(st.prompt_tokens, st.prompt_time),
                    st.gen_tokens,
                    rate(st.gen_tokens, st.gen_time),
                    crate::spec_args::summary(st.spec, st.gen_tokens)
                );
            }
            println!("sampler: {}", chat.sampler.describe());
            let _ = l;
        }
        _ => bail!("unknown command {cmd}; /help lists them"),
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("cria-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("conv.json");
        let msgs = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi \"there\" ünï"),
            Message::new("assistant", "Hello!\n"),
        ];
        save(&p, &msgs).unwrap();
        assert_eq!(load_conversation(&p).unwrap(), msgs);
        std::fs::write(&p, "{").unwrap();
        assert!(load_conversation(&p)
            .unwrap_err()
            .to_string()
            .contains("not a saved conversation"));
        std::fs::write(&p, r#"{"messages": [{"role": "wizard", "content": "x"}]}"#).unwrap();
        assert!(format!("{:#}", load_conversation(&p).unwrap_err()).contains("unknown role"));
        std::fs::write(
            &p,
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}"#,
        )
        .unwrap();
        assert!(load_conversation(&p).is_err());
        assert!(load_conversation(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `cria template`: the prompt a conversation becomes, exactly as the model will see it.
#[derive(Args, Clone)]
pub struct TemplateArgs {
    /// The model whose chat template to use (only its tokenizer is read).
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// OpenAI-style messages: a JSON list, or an object with a "messages" list.
    #[arg(long)]
    messages: PathBuf,
    /// OpenAI-style tool definitions (a JSON list, or an object with a "tools" list), rendered
    /// as `cria serve` renders a request's tools (the generic JSON form for a template that does
    /// not know tools).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Leave out the assistant header that asks the model to answer.
    #[arg(long = "no-generation-prompt")]
    no_generation_prompt: bool,
    /// Print the token ids after the text (on stderr).
    #[arg(long)]
    tokens: bool,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))
}

/// A JSON list, or the list under `key` of an object.
fn list_under(v: serde_json::Value, key: &str, path: &Path) -> Result<serde_json::Value> {
    match v {
        serde_json::Value::Array(_) => Ok(v),
        serde_json::Value::Object(mut o) => match o.remove(key) {
            Some(l @ serde_json::Value::Array(_)) => Ok(l),
            _ => bail!(
                "{}: expected a list, or an object with a \"{key}\" list",
                path.display()
            ),
        },
        _ => bail!(
            "{}: expected a list, or an object with a \"{key}\" list",
            path.display()
        ),
    }
}

pub fn template(a: &TemplateArgs, out: &mut dyn Write) -> Result<()> {
    let msgs = list_under(read_json(&a.messages)?, "messages", &a.messages)?;
    let messages: Vec<Message> = serde_json::from_value(msgs).with_context(|| {
        format!(
            "{}: every message needs a \"role\" and a string (or null) \"content\"",
            a.messages.display()
        )
    })?;
    let tools = match &a.tools {
        Some(p) => Some(list_under(read_json(p)?, "tools", p)?),
        None => None,
    };
    let tok = crate::load::tokenizer(a.model.as_deref())?;
    if tok.chat_template().is_none() {
        eprintln!("note: the model has no chat template; using ChatML");
    }
    let (text, ids) =
        cria_engine::render_chat(&tok, &messages, !a.no_generation_prompt, tools.as_ref())?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if a.tokens {
        let s: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
        eprintln!("\n{} tokens: {}", ids.len(), s.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tool_turn_tests {
    use super::*;

    /// /load takes a conversation saved by another client, with an assistant tool-call turn
    /// whose content is null, and it renders as the server would (no "None").
    #[test]
    fn load_accepts_a_tool_call_turn_with_null_content() {
        let dir = std::env::temp_dir().join(format!("cria-chat-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("conv.json");
        std::fs::write(
            &p,
            r#"{"messages": [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}"#,
        )
        .unwrap();
        let msgs = load_conversation(&p).unwrap();
        assert_eq!(msgs[1].content, None);
        let text = cria_engine::tools::ChatFormat::new(None)
            .unwrap()
            .render(&msgs, None, true, "", "")
            .unwrap();
        assert!(text.contains(r#""name":"get_weather""#), "{text}");
        assert!(!text.contains("None"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
