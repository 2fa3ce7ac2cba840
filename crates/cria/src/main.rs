//! The `cria` binary: thin subcommands over the library crates.

mod bench;
mod chat;
mod constraint_args;
mod convert;
mod data_prepare;
mod export;
mod fetch;
mod finetune;
mod imatrix;
mod inspect;
mod kld;
mod load;
mod merge;
mod models;
mod perplexity;
mod plan;
mod pretrain;
mod quantize;
mod run;
mod sample_args;
mod spec_args;
mod terminal;
mod tokenizer_train;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cria",
    version,
    about = "Run LLaMA-family models (GGUF or Hugging Face folders) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face model folder, hf:ORG/REPO[:FILE], or nothing for the default
    /// model (SmolLM2-135M-Instruct Q4_1, fetched on first use).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model: Option<String>,
    /// Threads (default: physical cores; at most 512).
    #[arg(short = 't', long, value_name = "N", value_parser = run::thread_count)]
    threads: Option<usize>,
    /// Dequantize all weights to f32 at load and use an f32 KV cache (unless --kv-type says
    /// otherwise): the exact reference path.
    #[arg(long)]
    f32: bool,
    /// KV cache element type: f16 (default, half the memory), f32 (exact comparisons; the
    /// default with --f32), q8_0 or q4_0 (ggml blocks: 53% and 28% of f16's memory).
    #[arg(long = "kv-type", value_name = "TYPE")]
    kv_type: Option<cria_model::KvType>,
    /// A LoRA adapter over the model (repeatable): a PEFT folder (adapter_config.json +
    /// adapter_model.safetensors) or a llama.cpp GGUF adapter, at SCALE (default 1) times the
    /// file's alpha / rank. Applied per token; the base stays as it is. (NAME= names it for
    /// `cria serve`.)
    #[arg(long = "lora", value_name = "[NAME=]PATH[:SCALE]", value_parser = parse_lora)]
    lora: Vec<cria_engine::lora::LoraSpec>,
    /// Fold the --lora adapters into f32 copies of the weights they target at load: no
    /// per-token adapter work, more memory.
    #[arg(long = "lora-merge", requires = "lora")]
    lora_merge: bool,
}

/// `--lora [NAME=]PATH[:SCALE]`; a trailing `:X` that is no number where PATH does not exist is
/// told as a bad scale rather than a missing file.
fn parse_lora(s: &str) -> Result<cria_engine::lora::LoraSpec, String> {
    let spec = cria_engine::lora::LoraSpec::parse(s).map_err(|e| format!("{e:#}"))?;
    if !spec.path.exists() {
        if let Some((p, x)) = spec.path.to_string_lossy().rsplit_once(':') {
            if std::path::Path::new(p).exists() {
                return Err(format!("scale {x:?} is not a number (--lora PATH[:SCALE])"));
            }
        }
    }
    Ok(spec)
}

impl ModelArgs {
    /// The KV cache type: --kv-type if given, else f32 with --f32, else f16.
    fn kv_type(&self) -> cria_model::KvType {
        match (self.kv_type, self.f32) {
            (Some(t), _) => t,
            (None, true) => cria_model::KvType::F32,
            (None, false) => cria_model::KvType::default(),
        }
    }

    /// The adapters the command loads with its model.
    fn lora(&self) -> cria_engine::LoraOptions {
        cria_engine::LoraOptions {
            specs: self.lora.clone(),
            merge: self.lora_merge,
        }
    }
}

#[derive(Args, Clone)]
struct TextArgs {
    /// Read the text from this file, byte for byte.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The text (when no --file).
    text: Option<String>,
}

impl TextArgs {
    fn read(&self) -> Result<String> {
        match (&self.file, &self.text) {
            (Some(f), None) => {
                let mut file =
                    std::fs::File::open(f).with_context(|| format!("reading {}", f.display()))?;
                run::read_prompt(&mut file, &f.display().to_string())
            }
            (None, Some(t)) => Ok(t.clone()),
            (Some(_), Some(_)) => bail!("give either --file or a text, not both"),
            (None, None) => bail!("no input: give a text or --file FILE"),
        }
    }
}

#[derive(Args, Clone)]
struct TokenizeArgs {
    /// Do not add BOS even if the model asks for it.
    #[arg(long = "no-bos")]
    no_bos: bool,
    /// Match special tokens (<|im_start|>, <s>...) written in the text.
    #[arg(long = "parse-special")]
    parse_special: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Quantize a model to another type, as llama-quantize does (same tensors, same bytes).
    Quantize(quantize::QuantizeArgs),
    /// Answer a prompt, streamed: cria run [MODEL] PROMPT (chat-templated unless --raw)
    Run(run::RunArgs),
    /// Print the tokens of a text.
    Tokenize {
        #[command(flatten)]
        m: ModelArgs,
        #[command(flatten)]
        input: TextArgs,
        #[command(flatten)]
        tok: TokenizeArgs,
        /// Only the ids, space-separated on one line.
        #[arg(long)]
        ids: bool,
    },
    /// Write the float32 logits of a text as a .npy file.
    Logits {
        #[command(flatten)]
        m: ModelArgs,
        #[command(flatten)]
        input: TextArgs,
        #[command(flatten)]
        tok: TokenizeArgs,
        /// Logits of every position, (n_tokens, vocab); default only the last, (vocab).
        #[arg(long)]
        all: bool,
        /// Comma-separated token ids instead of text.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        tokens: Option<Vec<u32>>,
        /// The .npy file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Tokens per prompt-processing batch.
        #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512, value_parser = run::at_least_one)]
        batch: usize,
        /// Print the sum of every intermediate (as llama.cpp's llama-eval-callback names them) to stderr.
        #[arg(long = "probe-sums")]
        probe_sums: bool,
    },
    /// Perplexity of a text file, by llama.cpp's method.
    Perplexity {
        #[command(flatten)]
        m: ModelArgs,
        /// The text file (e.g. wiki.test.raw).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Tokens per chunk (the context each chunk is evaluated in).
        #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 512, value_parser = run::at_least_one)]
        ctx_size: usize,
        /// Tokens per prompt-processing batch.
        #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512, value_parser = run::at_least_one)]
        batch: usize,
        /// Stop after this many chunks.
        #[arg(long = "chunks", value_name = "N")]
        chunks: Option<usize>,
        /// The base log-probs file (llama.cpp's layout): written, or with --kl-divergence read.
        #[arg(long = "kl-divergence-base", value_name = "FILE")]
        kld_base: Option<PathBuf>,
        /// Compare against --kl-divergence-base (its tokens and context; -f is not read).
        #[arg(long = "kl-divergence")]
        kld: bool,
    },
    /// The importance matrix of a model over a calibration text (llama.cpp's imatrix format), for
    /// `cria quantize --imatrix`.
    Imatrix(imatrix::ImatrixArgs),
    /// KL divergence of candidate models against a base model, side by side over a text, one
    /// table row per candidate (no log-probs file).
    Kld(kld::KldArgs),
    /// Prompt-processing and generation speed, as llama-bench measures it, with the share of the
    /// memory roofline that decoding reaches.
    Bench {
        /// Models (repeat -m for several; default: the default model).
        #[arg(short = 'm', long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// Prompt tokens for the pp test (0: skip).
        #[arg(
            short = 'p',
            long = "n-prompt",
            value_name = "N",
            default_value_t = 512
        )]
        prompt: usize,
        /// Generated tokens for the tg test (0: skip).
        #[arg(short = 'n', long = "n-gen", value_name = "N", default_value_t = 128)]
        gen: usize,
        /// Thread counts, comma-separated (default: physical cores).
        #[arg(short = 't', long = "threads", value_delimiter = ',', value_name = "N,...", value_parser = run::thread_count)]
        threads: Vec<usize>,
        /// Timed repetitions (after one warm-up run).
        #[arg(
            short = 'r',
            long = "repetitions",
            value_name = "N",
            default_value_t = 5
        )]
        reps: usize,
        /// KV cache element type: f16, f32, q8_0 or q4_0.
        #[arg(long = "kv-type", value_name = "TYPE", default_value = "f16")]
        kv_type: cria_model::KvType,
        /// Output: md (a table) or json.
        #[arg(short = 'o', long = "output", default_value = "md", value_parser = ["md", "json"])]
        output: String,
        /// A LoRA adapter every test also runs with, beside the base: [NAME=]PATH[:SCALE]
        /// (repeatable: all of them at once).
        #[arg(long = "lora", value_name = "[NAME=]PATH[:SCALE]", value_parser = parse_lora)]
        lora: Vec<cria_engine::lora::LoraSpec>,
        /// Also run with a random adapter of this rank over every linear layer (each stream
        /// its own with --parallel).
        #[arg(long = "lora-random", value_name = "RANK")]
        lora_random: Option<usize>,
        /// Element types of the random adapter, one row each: f32, f16, bf16.
        #[arg(long = "lora-type", value_delimiter = ',', value_name = "TYPE,...", default_value = "f32", value_parser = bench::lora_type)]
        lora_type: Vec<cria_core::DType>,
        /// Also a test of N concurrent generations through the batch scheduler (aggregate t/s).
        #[arg(long = "parallel", value_name = "N", default_value_t = 0)]
        parallel: usize,
        /// With --lookup or --draft-model: the prompt of the speculative decoding test (decode
        /// t/s with and without, acceptance, tokens per forward), instead of pp/tg.
        #[arg(long = "prompt-file", value_name = "FILE")]
        prompt_file: Option<std::path::PathBuf>,
        /// With --prompt-file: sample at this temperature (default sampler chain, --seed)
        /// instead of greedy decoding; the seeded text is the same with and without
        /// speculation, and drafts fail more often.
        #[arg(
            long = "temp",
            value_name = "T",
            default_value_t = 0.0,
            requires = "prompt_file"
        )]
        temp: f32,
        /// The sampling seed of --temp.
        #[arg(
            long = "seed",
            value_name = "N",
            default_value_t = 0,
            requires = "prompt_file"
        )]
        seed: u64,
        #[command(flatten)]
        spec: spec_args::SpecArgs,
    },
    /// Talk with a model: streaming answers, its chat template, history, slash commands.
    Chat(chat::ChatArgs),
    /// Print the prompt a conversation (OpenAI-style messages) becomes under the model's chat
    /// template, exactly.
    Template(chat::TemplateArgs),
    /// Download a model (Hugging Face repo, hf:ORG/REPO:FILE, or a short name like smollm2).
    Pull(models::PullArgs),
    /// Write a model (any GGUF, quantized ones dequantized) as a Hugging Face folder that
    /// transformers loads: config.json, safetensors, tokenizer files.
    Export(export::ExportArgs),
    /// The models cria has (its cache and the Hugging Face cache).
    List(models::ListArgs),
    /// Remove a downloaded model.
    Rm(models::RmArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, with continuous batching.
    Serve {
        #[command(flatten)]
        m: ModelArgs,
        #[command(flatten)]
        s: cria_server::ServeArgs,
    },
    /// A Hugging Face LLaMA folder as a GGUF, as llama.cpp's convert_hf_to_gguf.py writes it.
    Convert(convert::ConvertArgs),
    /// LoRA adapters folded into a model, written as a GGUF (any type `cria quantize` writes)
    /// or a Hugging Face folder.
    Merge(merge::MergeArgs),
    /// LoRA / QLoRA fine-tuning over the model you run (HF folder or GGUF, quantized or not):
    /// writes a PEFT adapter folder (+ --gguf a llama.cpp LoRA) for `cria run --lora`.
    Finetune(Box<finetune::FinetuneArgs>),
    /// Pretraining from scratch on `cria data prepare` shards: writes RUN/final, an HF folder.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// A compute-optimal pretraining plan (Chinchilla, 20 tokens per parameter) from this
    /// machine's measured training throughput: shape, tokens, batch, lr, time, config.json.
    Plan(plan::PlanArgs),
    /// Tokenizers for pretraining: `cria tokenizer train` (byte-level BPE, LLaMA 3 style).
    #[command(subcommand)]
    Tokenizer(tokenizer_train::TokenizerCmd),
    /// Pretraining data: `cria data prepare` (a corpus into token shards).
    #[command(subcommand)]
    Data(data_prepare::DataCmd),
    /// Architecture, hyper-parameters, tokenizer and tensor table of a model; rank, alpha,
    /// targets and size of a LoRA adapter.
    Inspect {
        /// The model: a .gguf file, a Hugging Face model folder, hf:ORG/REPO[:FILE] or a short
        /// name (default: the default model); or a LoRA adapter (a PEFT folder or a GGUF
        /// adapter).
        #[arg(value_name = "MODEL", conflicts_with = "model_flag")]
        model: Option<String>,
        /// The model, as the other commands take it.
        #[arg(short = 'm', long = "model", value_name = "MODEL")]
        model_flag: Option<String>,
        /// Also print every metadata key.
        #[arg(long)]
        metadata: bool,
    },
}

/// glibc's malloc raises its mmap threshold to the size of each large block freed (up to 32
/// MiB), so after one burst of big requests (megabyte /tokenize answers, embedding batches) such
/// blocks come from the per-thread arenas, which never give their pages back: the server's
/// resident memory stays at its high-water mark. A fixed threshold keeps every block above 128
/// KiB in its own mapping, returned when freed, and two arenas instead of one per thread (8 per
/// core) leave less memory stranded in arenas that a burst's threads once used. `cria serve`
/// sets both through glibc's tunables, read at start-up, by running itself again with them added
/// (a safe `exec`; no FFI), unless the environment already sets them. Other commands keep
/// glibc's defaults.
fn serve_malloc_settings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const SETTINGS: [(&str, &str); 2] = [
            ("glibc.malloc.mmap_threshold", "131072"),
            ("glibc.malloc.arena_max", "2"),
        ];
        let old = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let missing: Vec<String> = SETTINGS
            .iter()
            .filter(|(k, _)| !old.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !missing.is_empty() {
            let tunables = std::iter::once(old.as_str())
                .filter(|o| !o.is_empty())
                .chain(missing.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(":");
            // `exec` returns only if it failed; then serve with glibc's defaults.
            let e = match std::env::current_exe() {
                Ok(exe) => std::process::Command::new(exe)
                    .args(std::env::args_os().skip(1))
                    .env("GLIBC_TUNABLES", tunables)
                    .exec(),
                Err(e) => e,
            };
            eprintln!("cria serve: note: could not set glibc's malloc tunables ({e}); memory freed after a burst may stay resident");
        }
    }
}

fn main() {
    if let Err(e) = real_main() {
        // The reader went away (`cria inspect | head`): nothing left to say.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// llama.cpp's `-ctk TYPE` / `-ctv TYPE` (`--cache-type-k` / `--cache-type-v`) become
/// `--kv-type TYPE`: cria keeps keys and values in one type, so the two must agree (a K type
/// without a V type, or the reverse, sets both). clap has no multi-letter short flags, hence
/// this rewrite before parsing.
fn cache_type_args(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut seen: Option<(String, std::ffi::OsString)> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let flag = match a.to_str() {
            Some(f @ ("-ctk" | "-ctv" | "--cache-type-k" | "--cache-type-v")) => f.to_string(),
            _ => {
                out.push(a);
                continue;
            }
        };
        let Some(v) = it.next() else {
            bail!("{flag} needs a value: f16, f32, q8_0 or q4_0");
        };
        match &seen {
            None => {
                out.push("--kv-type".into());
                out.push(v.clone());
                seen = Some((flag, v));
            }
            Some((_, first)) if *first == v => {}
            Some((f0, first)) => bail!(
                "{f0} {} and {flag} {}: cria keeps keys and values in one type (--kv-type), so they must be the same",
                first.to_string_lossy(),
                v.to_string_lossy()
            ),
        }
    }
    Ok(out)
}

fn real_main() -> Result<()> {
    let cli = Cli::parse_from(cache_type_args(std::env::args_os().collect())?);
    if matches!(cli.cmd, Cmd::Serve { .. }) {
        serve_malloc_settings();
    }
    match cli.cmd {
        Cmd::Run(a) => run::run(&a)?,
        Cmd::Tokenize { m, input, tok, ids } => {
            let text = input.read()?;
            let l = load::tokenizer(m.model.as_deref())?;
            let toks = l.encode(&text, !tok.no_bos, tok.parse_special);
            let mut out = std::io::stdout().lock();
            if ids {
                let s: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
                writeln!(out, "{}", s.join(" "))?;
            } else {
                for t in toks {
                    // Control tokens by their text (their piece is empty).
                    let piece = match l.is_control(t) {
                        true => l.token_text(t).as_bytes().to_vec(),
                        false => l.token_to_piece(t),
                    };
                    writeln!(out, "{t:6} '{}'", inspect::escaped(&piece))?;
                }
            }
        }
        Cmd::Logits {
            m,
            input,
            tok,
            all,
            tokens,
            out,
            batch,
            probe_sums,
        } => {
            let l = load::model(m.model.as_deref(), &m)?;
            let toks = match tokens {
                Some(t) => t,
                None => l.encode(&input.read()?, !tok.no_bos, tok.parse_special),
            };
            let probe: Option<cria_model::Probe> = probe_sums.then(|| {
                Box::new(|name: &str, layer: usize, v: &[f32]| {
                    let sum: f64 = v.iter().map(|&x| x as f64).sum();
                    let name = if matches!(name, "embd" | "result_norm" | "result_output") {
                        name.to_string()
                    } else {
                        format!("{name}-{layer}")
                    };
                    eprintln!("{name} sum = {sum:.6}");
                }) as cria_model::Probe
            });
            let logits = l.logits(&toks, all, batch, probe)?;
            let v = l.model.config.vocab_size;
            let shape = if all { vec![toks.len(), v] } else { vec![v] };
            cria_core::npy::write_f32(&out, &shape, &logits)?;
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            eprintln!(
                "wrote {} logits ({}) for {} tokens to {}",
                logits.len(),
                dims.join(" x "),
                toks.len(),
                out.display()
            );
        }
        Cmd::Perplexity {
            m,
            file,
            ctx_size,
            batch,
            chunks,
            kld_base,
            kld,
        } => {
            if kld {
                let Some(base) = kld_base else {
                    bail!("--kl-divergence needs --kl-divergence-base FILE (the base model's log-probs)");
                };
                let l = load::model(m.model.as_deref(), &m)?;
                perplexity::kl_divergence(&l, &base, batch, &mut std::io::stdout().lock())?;
                return Ok(());
            }
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let text = String::from_utf8_lossy(&text).into_owned();
            let l = load::model(m.model.as_deref(), &m)?;
            perplexity::run(
                &l,
                &text,
                ctx_size,
                batch,
                chunks,
                kld_base.as_deref(),
                &mut std::io::stdout().lock(),
            )?;
        }
        Cmd::Imatrix(a) => imatrix::run(&a, &mut std::io::stdout().lock())?,
        Cmd::Kld(a) => kld::run(&a, &mut std::io::stdout().lock())?,
        Cmd::Bench {
            kv_type,
            models,
            prompt,
            gen,
            threads,
            reps,
            output,
            lora,
            lora_random,
            lora_type,
            parallel,
            prompt_file,
            temp,
            seed,
            spec,
        } => {
            let models = if models.is_empty() {
                vec![None]
            } else {
                models.into_iter().map(Some).collect()
            };
            let threads = if threads.is_empty() {
                vec![cria_engine::load::default_threads()]
            } else {
                threads
            };
            bench::run(
                &bench::BenchOptions {
                    models,
                    prompt,
                    gen,
                    threads,
                    reps,
                    json: output == "json",
                    kv_type,
                    lora,
                    lora_random,
                    lora_types: lora_type,
                    parallel,
                    spec,
                    prompt_file,
                    spec_sampling: (temp, seed),
                },
                &mut std::io::stdout().lock(),
            )?;
        }
        Cmd::Quantize(a) => quantize::run(&a)?,
        Cmd::Chat(a) => chat::run(&a)?,
        Cmd::Template(a) => chat::template(&a, &mut std::io::stdout().lock())?,
        Cmd::Pull(a) => models::pull(&a)?,
        Cmd::Export(a) => export::run(&a)?,
        Cmd::List(a) => models::list(&a)?,
        Cmd::Rm(a) => models::rm(&a)?,
        Cmd::Convert(a) => convert::run(&a)?,
        Cmd::Merge(a) => merge::run(&a)?,
        Cmd::Finetune(a) => finetune::run(&a)?,
        Cmd::Pretrain(a) => pretrain::run(&a)?,
        Cmd::Plan(a) => plan::run(&a)?,
        Cmd::Tokenizer(c) => tokenizer_train::run(&c)?,
        Cmd::Data(c) => data_prepare::run(&c)?,
        Cmd::Serve { m, mut s } => {
            // The draft model named as -m names models (a path, hf:ORG/REPO[:FILE], a short
            // name): resolved (fetched if needed) to the local path the server loads.
            if let Some(d) = &s.spec.draft_model {
                s.spec.draft_model = Some(fetch::resolve(Some(d))?.path.display().to_string());
            }
            cria_server::run(load::model(m.model.as_deref(), &m)?, &s)?
        }
        Cmd::Inspect {
            model,
            model_flag,
            metadata,
        } => inspect::run(
            model.or(model_flag).as_deref(),
            metadata,
            &mut std::io::stdout().lock(),
        )?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cache_type_args;
    use std::ffi::OsString;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn llama_cpp_cache_type_flags_become_kv_type() {
        let a = cache_type_args(args(&["cria", "run", "-ctk", "q8_0", "-ctv", "q8_0", "hi"]));
        assert_eq!(
            a.unwrap(),
            args(&["cria", "run", "--kv-type", "q8_0", "hi"])
        );
        let a = cache_type_args(args(&["cria", "serve", "--cache-type-v", "q4_0"]));
        assert_eq!(a.unwrap(), args(&["cria", "serve", "--kv-type", "q4_0"]));
        let e = cache_type_args(args(&["cria", "run", "-ctk", "q8_0", "-ctv", "f16"]));
        assert!(e.unwrap_err().to_string().contains("must be the same"));
        let e = cache_type_args(args(&["cria", "run", "-ctk"]));
        assert!(e.unwrap_err().to_string().contains("-ctk needs a value"));
        // Other words pass through untouched, even after the flags.
        let a = cache_type_args(args(&[
            "cria", "run", "-n", "-1", "-ctk", "f32", "--", "-ctx",
        ]));
        assert_eq!(
            a.unwrap(),
            args(&["cria", "run", "-n", "-1", "--kv-type", "f32", "--", "-ctx"])
        );
    }
}
