//! `cria data prepare CORPUS... --tokenizer T -o data/` (issue 24): a text corpus tokenized on
//! all threads into llm.c-style token shards (`cria_train::shards`) with a validation split, and
//! the corpus reader `cria tokenizer train` shares.
//!
//! Documents:
//! - a text file (any name not ending in `.jsonl`): one document per paragraph, paragraphs being
//!   separated by one or more blank (whitespace-only) lines; the lines of a paragraph keep their
//!   newlines, the paragraph's last newline is dropped;
//! - a `.jsonl` file: one document per line, the line's `{"text": ...}` string;
//! - a directory: its `.txt`, `.text`, `.md` and `.jsonl` files, recursively, in path order
//!   (hidden entries skipped).
//!
//! A document is held whole in memory while it is tokenized: a text file with no blank line is
//! one document the size of the file (split such files, or write JSONL).
//! Whitespace-only documents are skipped and not counted. Each document is tokenized without
//! BOS and without parsing special-token text (a literal `<|eot_id|>` in the corpus stays text),
//! then the end-of-text token is appended: `<|end_of_text|>` or `<|endoftext|>` when the
//! vocabulary has one, else the tokenizer's EOS (a tokenizer with neither is refused).
//!
//! A tokenizer whose chat template writes a special token (`<|name|>`) its vocabulary lacks is
//! refused ([`check_chat_template`]): a model trained on it could never be chatted with.
//!
//! Validation split: document `i` (0-based, over the whole corpus in order) goes to validation
//! when `floor((i + 1) f) > floor(i f)` for `--val-fraction f`: exactly `floor(n f)` of `n`
//! documents, spread evenly, each kept whole.
//!
//! Shards: `train_000000.bin`, ... and `val_000000.bin`, ... of `--shard-tokens` tokens each (the
//! last of each split shorter); the token stream of a split runs on across shard boundaries.
//! `data.json`, the manifest, is rewritten (atomically) after every completed shard with, per
//! split, the shards done and the position (document, token within it) where the next shard
//! starts; `done` becomes true at the end.
//!
//! Resume: rerunning the same command over a folder whose manifest is not done continues after
//! the last complete shard (documents before it are read but not tokenized); the shards come out
//! byte-identical to an uninterrupted run. Other settings (files, tokenizer, fraction, shard
//! size) are refused rather than mixed. The test hook `CRIA_TEST_FAIL_AFTER_SHARDS=N` makes the
//! run fail right after its N-th completed shard (and manifest) of this process, to test resume.

use anyhow::{bail, Context, Result};
use cria_train::shards::{width_for_vocab, ShardWriter};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct DataPrepareArgs {
    /// Text files, JSONL files ({"text": ...} per line) or directories (recursive).
    #[arg(required = true)]
    pub corpus: Vec<PathBuf>,
    /// The tokenizer: a folder with tokenizer.json (e.g. from `cria tokenizer train`) or any
    /// model cria runs (its tokenizer).
    #[arg(long)]
    pub tokenizer: String,
    /// Output folder (shards + data.json).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Fraction of documents held out for validation (0 for none).
    #[arg(long, default_value_t = 0.005)]
    pub val_fraction: f64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: u64,
    /// Tokenizer threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Tokenize a corpus into token shards (train + validation) for `cria pretrain`.
    Prepare(DataPrepareArgs),
}

pub fn run(c: &DataCmd) -> Result<()> {
    match c {
        DataCmd::Prepare(a) => prepare(a),
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus.

/// One input file.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub jsonl: bool,
    pub bytes: u64,
}

fn is_jsonl(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "jsonl")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        entries.push(e.path());
    }
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|e| e == "txt" || e == "text" || e == "md" || e == "jsonl")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// The files of `inputs` (directories expanded), in order; a missing input is an error, and so is
/// a corpus with no bytes at all.
pub fn collect_sources(inputs: &[PathBuf]) -> Result<Vec<Source>> {
    let mut paths = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let before = paths.len();
            walk(p, &mut paths)?;
            if paths.len() == before {
                bail!(
                    "{}: no .txt, .text, .md or .jsonl files in this directory",
                    p.display()
                );
            }
        } else if p.is_file() {
            paths.push(p.clone());
        } else {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        out.push(Source {
            jsonl: is_jsonl(&path),
            path,
            bytes,
        });
    }
    if out.iter().all(|s| s.bytes == 0) {
        bail!("empty corpus: the input files hold no text");
    }
    Ok(out)
}

/// The documents of a list of sources, streamed in order; `bytes_read` counts input bytes
/// consumed (for a progress bar).
pub struct Docs {
    sources: Vec<Source>,
    next_source: usize,
    cur: Option<(std::io::BufReader<std::fs::File>, usize)>, // reader, source index
    line_no: u64,
    pub bytes_read: Arc<AtomicU64>,
}

impl Docs {
    pub fn new(sources: Vec<Source>) -> Docs {
        Docs {
            sources,
            next_source: 0,
            cur: None,
            line_no: 0,
            bytes_read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads one line (with its newline) into `line`; false at the end of the file.
    fn read_line(&mut self, line: &mut String) -> Result<bool> {
        let (r, si) = self.cur.as_mut().unwrap();
        line.clear();
        let n = r.read_line(line).with_context(|| {
            format!(
                "{}:{}: reading (not UTF-8 text?)",
                self.sources[*si].path.display(),
                self.line_no + 1
            )
        })?;
        self.line_no += 1;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n > 0)
    }

    fn next_doc(&mut self) -> Result<Option<String>> {
        let mut line = String::new();
        loop {
            if self.cur.is_none() {
                if self.next_source == self.sources.len() {
                    return Ok(None);
                }
                let si = self.next_source;
                self.next_source += 1;
                let p = &self.sources[si].path;
                let f =
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
                self.cur = Some((std::io::BufReader::with_capacity(1 << 20, f), si));
                self.line_no = 0;
            }
            let si = self.cur.as_ref().unwrap().1;
            if self.sources[si].jsonl {
                if !self.read_line(&mut line)? {
                    self.cur = None;
                    continue;
                }
                if line.trim().is_empty() {
                    continue;
                }
                let where_ = || format!("{}:{}", self.sources[si].path.display(), self.line_no);
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("{}: not a JSON line", where_()))?;
                let Some(t) = v.get("text").and_then(Value::as_str) else {
                    bail!("{}: no \"text\" string in this JSON line", where_());
                };
                if !t.trim().is_empty() {
                    return Ok(Some(t.to_string()));
                }
            } else {
                let mut doc = String::new();
                let mut eof = false;
                loop {
                    if !self.read_line(&mut line)? {
                        eof = true;
                        break;
                    }
                    if line.trim().is_empty() {
                        if doc.trim().is_empty() {
                            doc.clear();
                            continue;
                        }
                        break;
                    }
                    doc.push_str(&line);
                }
                if eof {
                    self.cur = None;
                }
                if doc.ends_with('\n') {
                    doc.pop();
                    if doc.ends_with('\r') {
                        doc.pop();
                    }
                }
                if !doc.trim().is_empty() {
                    return Ok(Some(doc));
                }
            }
        }
    }
}

impl Iterator for Docs {
    type Item = Result<String>;
    fn next(&mut self) -> Option<Result<String>> {
        self.next_doc().transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// Preparation.

/// Whether document `i` belongs to the validation split for fraction `f`.
pub fn is_val(i: u64, f: f64) -> bool {
    f > 0.0 && ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

/// One split's state: finished shards, the position after the last one, the shard being written.
struct Split {
    name: &'static str,
    shards: Vec<(String, u64)>,
    /// (document, token within it) of the first token not in a finished shard.
    resume: (u64, u64),
    cur: Option<ShardWriter>,
    docs: u64,
}

impl Split {
    fn from_manifest(name: &'static str, m: &Value) -> Result<Split> {
        let mut shards = Vec::new();
        for s in m["shards"].as_array().into_iter().flatten() {
            let (Some(f), Some(t)) = (s["file"].as_str(), s["tokens"].as_u64()) else {
                bail!("data.json: bad shard entry {s}");
            };
            shards.push((f.to_string(), t));
        }
        let resume = (
            m["resume"]["doc"].as_u64().unwrap_or(0),
            m["resume"]["offset"].as_u64().unwrap_or(0),
        );
        Ok(Split {
            name,
            shards,
            resume,
            cur: None,
            docs: 0,
        })
    }

    fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.1).sum::<u64>() + self.cur.as_ref().map_or(0, |w| w.count())
    }

    fn to_json(&self) -> Value {
        json!({
            "shards": self.shards.iter().map(|(f, t)| json!({"file": f, "tokens": t})).collect::<Vec<_>>(),
            "tokens": self.shards.iter().map(|s| s.1).sum::<u64>(),
            "documents": self.docs,
            "resume": {"doc": self.resume.0, "offset": self.resume.1},
        })
    }
}

struct Run<'a> {
    dir: &'a Path,
    settings: Value,
    vocab: u32,
    shard_tokens: u64,
    splits: [Split; 2],
    shards_this_run: u64,
    fail_after: Option<u64>,
}

impl Run<'_> {
    fn write_manifest(&self, done: bool, documents: Option<u64>) -> Result<()> {
        let mut m = self.settings.clone();
        m["train"] = self.splits[0].to_json();
        m["val"] = self.splits[1].to_json();
        if let Some(d) = documents {
            m["documents"] = json!(d);
        }
        m["done"] = json!(done);
        let p = self.dir.join("data.json");
        let tmp = self.dir.join("data.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&m)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    fn finish_shard(&mut self, s: usize) -> Result<()> {
        let sp = &mut self.splits[s];
        let Some(w) = sp.cur.take() else {
            return Ok(());
        };
        let n = w.count();
        let path = w.finish()?;
        sp.shards
            .push((path.file_name().unwrap().to_string_lossy().into_owned(), n));
        Ok(())
    }

    /// Appends the tokens of document `d` (EOS included) to split `s`.
    fn push_doc(&mut self, s: usize, d: u64, toks: &[u32]) -> Result<()> {
        let (rd, ro) = self.splits[s].resume;
        if d < rd {
            return Ok(());
        }
        let mut i = if d == rd { ro as usize } else { 0 };
        while i < toks.len() {
            if self.splits[s].cur.is_none() {
                std::fs::create_dir_all(self.dir)
                    .with_context(|| format!("creating {}", self.dir.display()))?;
                let sp = &self.splits[s];
                let name = format!("{}_{:06}.bin", sp.name, sp.shards.len());
                self.splits[s].cur = Some(ShardWriter::create(&self.dir.join(name), self.vocab)?);
            }
            let w = self.splits[s].cur.as_mut().unwrap();
            let room = (self.shard_tokens - w.count()) as usize;
            let take = room.min(toks.len() - i);
            w.push(&toks[i..i + take])?;
            i += take;
            if w.count() == self.shard_tokens {
                self.finish_shard(s)?;
                self.splits[s].resume = if i == toks.len() {
                    (d + 1, 0)
                } else {
                    (d, i as u64)
                };
                self.write_manifest(false, None)?;
                self.shards_this_run += 1;
                if self.fail_after.is_some_and(|n| self.shards_this_run >= n) {
                    bail!(
                        "CRIA_TEST_FAIL_AFTER_SHARDS: stopping after {} shard(s) (fault injection)",
                        self.shards_this_run
                    );
                }
            }
        }
        Ok(())
    }
}

/// SHA-256 of the tokenizer's vocabulary (token texts in id order, NUL-separated) and its EOS id:
/// a fingerprint that does not depend on the file format the tokenizer came from.
fn tokenizer_fingerprint(tok: &cria_tokenizer::Tokenizer) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for id in 0..tok.vocab_size() as u32 {
        h.update(tok.token_text(id).as_bytes());
        h.update([0u8]);
    }
    h.update(format!("eos={:?}", tok.eos()).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokenizes `docs` on `threads` threads (contiguous chunks), EOS appended to each.
fn encode_batch(
    tok: &cria_tokenizer::Tokenizer,
    docs: &[String],
    eos: u32,
    threads: usize,
) -> Vec<Vec<u32>> {
    let enc = |d: &String| {
        let mut t = tok.encode(d, false, false);
        t.push(eos);
        t
    };
    if threads <= 1 || docs.len() < 2 {
        return docs.iter().map(enc).collect();
    }
    let chunk = docs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = docs
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(enc).collect::<Vec<_>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("tokenizer thread panicked"))
            .collect()
    })
}

/// The special tokens a chat template writes as literal text: every `<|name|>` in it (name of
/// letters, digits, `_`, `-`, `.`), in order of first appearance. (`<s>`-style tags and `[INST]`
/// are left out: a template may write those as plain text.)
pub fn template_specials(template: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("<|") {
        let after = &rest[i + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with("|>") {
            let tok = &rest[i..i + 2 + name_len + 2];
            if !out.contains(&tok) {
                out.push(tok);
            }
            rest = &rest[i + 2 + name_len + 2..];
        } else {
            rest = after;
        }
    }
    out
}

/// An error when the tokenizer's chat template writes a special token (`<|name|>`) that is not
/// one token of its vocabulary: such a template would feed the model the token's text split
/// into pieces, which no training taught it. `what` names the tokenizer in the message.
pub fn check_chat_template(tok: &cria_tokenizer::Tokenizer, what: &str) -> Result<()> {
    let Some(t) = tok.chat_template() else {
        return Ok(());
    };
    let missing: Vec<&str> = template_specials(t)
        .into_iter()
        .filter(|s| tok.token_id(s).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the chat template of {what} writes {}, which {} not a token of its vocabulary: the \
             template does not match the tokenizer (fix chat_template in tokenizer_config.json, \
             or train the tokenizer with those special tokens); nothing was written",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        );
    }
    Ok(())
}

/// Document separators preferred over the tokenizer's EOS when the vocabulary has them: an
/// instruct model's EOS is often its end-of-turn token (SmolLM2's `<|im_end|>`).
const END_OF_TEXT: [&str; 2] = ["<|end_of_text|>", "<|endoftext|>"];

pub fn prepare(a: &DataPrepareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!(
            "--val-fraction {} out of range: 0 (no validation) up to below 1",
            a.val_fraction
        );
    }
    if a.shard_tokens == 0 {
        bail!("--shard-tokens must be at least 1");
    }
    let sources = collect_sources(&a.corpus)?;
    // A tokenizer folder (tokenizer.json, no model) is read directly; anything else is a model spec.
    let tpath = Path::new(&a.tokenizer);
    let tok = if tpath.join("tokenizer.json").is_file() && !tpath.join("config.json").exists() {
        cria_engine::load_tokenizer_only(tpath)
    } else {
        crate::load::tokenizer(Some(&a.tokenizer))
    }
    .with_context(|| format!("loading the tokenizer of {}", a.tokenizer))?;
    check_chat_template(&tok, &a.tokenizer)?;
    let Some(eos) = END_OF_TEXT
        .iter()
        .find_map(|t| tok.token_id(t))
        .or(tok.eos())
    else {
        bail!(
            "the tokenizer of {} has no end-of-text (EOS) token, which separates documents; \
             use a tokenizer with one (cria tokenizer train adds <|end_of_text|>)",
            a.tokenizer
        );
    };
    let vocab = u32::try_from(tok.vocab_size())
        .ok()
        .filter(|&v| v <= cria_train::shards::MAX_VOCAB)
        .context("vocabulary too large for a token shard")?;
    let settings = json!({
        "format": "cria-token-shards",
        "version": cria_train::shards::VERSION,
        "tokenizer": a.tokenizer,
        "tokenizer_sha256": tokenizer_fingerprint(&tok),
        "vocab_size": vocab,
        "eos_id": eos,
        "token_width": width_for_vocab(vocab),
        "files": sources.iter().map(|s| json!({"path": s.path.display().to_string(), "bytes": s.bytes})).collect::<Vec<_>>(),
        "val_fraction": a.val_fraction,
        "shard_tokens": a.shard_tokens,
    });
    let dir = a.output.as_path();
    let mpath = dir.join("data.json");
    let mut splits = [
        Split::from_manifest("train", &Value::Null)?,
        Split::from_manifest("val", &Value::Null)?,
    ];
    if mpath.exists() {
        let m: Value = serde_json::from_slice(
            &std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?,
        )
        .with_context(|| format!("parsing {}", mpath.display()))?;
        for k in settings.as_object().unwrap().keys() {
            if k != "tokenizer" && m[k] != settings[k] {
                bail!(
                    "{} was prepared with another {k} ({} here, {} there): use another -o folder \
                     or remove it; nothing was changed",
                    dir.display(),
                    settings[k],
                    m[k]
                );
            }
        }
        if m["done"].as_bool() == Some(true) {
            eprintln!(
                "{} is already prepared (data.json done): nothing to do",
                dir.display()
            );
            return Ok(());
        }
        splits = [
            Split::from_manifest("train", &m["train"])?,
            Split::from_manifest("val", &m["val"])?,
        ];
        for sp in &splits {
            for (f, t) in &sp.shards {
                let s = cria_train::shards::Shard::open(&dir.join(f))
                    .with_context(|| format!("resuming {}", dir.display()))?;
                if s.len() as u64 != *t || *t != a.shard_tokens {
                    bail!("{f}: {} tokens, the manifest says {t}", s.len());
                }
            }
        }
        eprintln!(
            "resuming {}: {} train and {} val shard(s) already done",
            dir.display(),
            splits[0].shards.len(),
            splits[1].shards.len()
        );
    } else if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty but holds no data.json: use an empty or new folder",
            dir.display()
        );
    }
    let fail_after = std::env::var("CRIA_TEST_FAIL_AFTER_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut run = Run {
        dir,
        settings,
        vocab,
        shard_tokens: a.shard_tokens,
        splits,
        shards_this_run: 0,
        fail_after,
    };
    let total_bytes: u64 = sources.iter().map(|s| s.bytes).sum();
    let mut docs = Docs::new(sources);
    let bytes_read = docs.bytes_read.clone();
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
        )
        .unwrap(),
    );
    const BATCH_BYTES: usize = 4 << 20;
    let mut d: u64 = 0; // documents read
    loop {
        let mut batch = Vec::new();
        let mut idx = Vec::new();
        let mut size = 0;
        let mut end = false;
        while size < BATCH_BYTES {
            let Some(doc) = docs.next() else {
                end = true;
                break;
            };
            let doc = doc?;
            let (i, sp) = (d, usize::from(is_val(d, a.val_fraction)));
            d += 1;
            run.splits[sp].docs += 1;
            // A document wholly inside its split's finished shards is read, not tokenized.
            if i < run.splits[sp].resume.0 {
                continue;
            }
            size += doc.len();
            batch.push(doc);
            idx.push((i, sp));
        }
        for (&(i, sp), t) in idx.iter().zip(encode_batch(&tok, &batch, eos, threads)) {
            run.push_doc(sp, i, &t)?;
        }
        bar.set_position(bytes_read.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{} train / {} val tokens",
            run.splits[0].tokens(),
            run.splits[1].tokens()
        ));
        if end {
            break;
        }
    }
    bar.finish_and_clear();
    if d == 0 {
        bail!("empty corpus: no documents (only blank text) in the input files");
    }
    for s in 0..2 {
        run.finish_shard(s)?;
        run.splits[s].resume = (d, 0);
    }
    if run.splits[0].shards.is_empty() {
        bail!(
            "every one of the {d} document(s) went to validation: lower --val-fraction or add text"
        );
    }
    if a.val_fraction > 0.0 && run.splits[1].shards.is_empty() {
        eprintln!(
            "warning: --val-fraction {} of {d} document(s) is no document: no validation split",
            a.val_fraction
        );
    }
    run.write_manifest(true, Some(d))?;
    let t = |s: &Split| s.shards.iter().map(|x| x.1).sum::<u64>();
    eprintln!(
        "{d} documents -> {} train tokens in {} shard(s), {} val tokens in {} shard(s), in {}",
        t(&run.splits[0]),
        run.splits[0].shards.len(),
        t(&run.splits[1]),
        run.splits[1].shards.len(),
        dir.display()
    );
    Ok(())
}
