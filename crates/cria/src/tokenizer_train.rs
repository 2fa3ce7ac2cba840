//! `cria tokenizer train --vocab-size 8192 -o tok/ CORPUS...` (issue 24): a byte-level BPE
//! tokenizer trained by the Hugging Face `tokenizers` crate's BPE trainer, in the LLaMA 3 shape:
//!
//! - pre-tokenization: LLaMA 3's split regex (isolated pieces), then `ByteLevel` (no prefix space,
//!   no regex of its own); the 256 byte symbols are the initial alphabet, so any text, any
//!   language or binary, encodes without an unknown token (byte fallback by construction);
//! - the model: BPE with `ignore_merges` (a whole pre-token in the vocabulary is one token), as
//!   LLaMA 3's tokenizer.json has; decoder `ByteLevel`;
//! - special tokens, after the learned vocabulary (ids vocab-5..vocab): `<|begin_of_text|>`
//!   (BOS, added at the start of every encoding by a `TemplateProcessing` post-processor, as LLaMA
//!   3's is), `<|end_of_text|>` (EOS, separates documents in `cria data prepare`),
//!   `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>` (the chat template's);
//! - tokenizer_config.json: bos/eos tokens, the LLaMA 3 chat template, `added_tokens_decoder`,
//!   `tokenizer_class` PreTrainedTokenizerFast (transformers' `AutoTokenizer` loads the folder).
//!
//! Documents are read as `cria data prepare` reads them (paragraphs of text files, JSONL
//! `{"text"}` lines, directories). `--vocab-size` counts everything, special tokens included; a
//! small corpus may give fewer merges than asked (the count is printed).

use crate::data_prepare::{collect_sources, Docs};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerImpl,
};

/// LLaMA 3's pre-tokenization regex (tokenizer.json `Split` pattern), the one cria-tokenizer
/// recognises as `llama3`.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub const BOS: &str = "<|begin_of_text|>";
pub const EOS: &str = "<|end_of_text|>";
/// The special tokens, in id order after the learned vocabulary.
pub const SPECIALS: [&str; 5] = [
    BOS,
    EOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// The chat template written to tokenizer_config.json: LLaMA 3's (header tokens around the role,
/// `<|eot_id|>` after each message).
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// The largest vocabulary accepted (Gemma 3's 262144).
pub const MAX_VOCAB: usize = 262_144;

#[derive(clap::Args, Debug)]
pub struct TokenizerTrainArgs {
    /// Text files, JSONL files ({"text": ...} per line) or directories (recursive).
    #[arg(required = true)]
    pub corpus: Vec<PathBuf>,
    /// Vocabulary size, special tokens included (256 + 5 ..= 262144).
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Output folder: tokenizer.json + tokenizer_config.json (existing ones are not overwritten).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// A merge needs a pair seen at least this many times.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenizerCmd {
    /// Train a byte-level BPE tokenizer (LLaMA 3 style) on a corpus.
    Train(TokenizerTrainArgs),
}

pub fn run(c: &TokenizerCmd) -> Result<()> {
    match c {
        TokenizerCmd::Train(a) => train(a),
    }
}

type Tok = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

fn tk<T>(r: tokenizers::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e}"))
}

pub fn train(a: &TokenizerTrainArgs) -> Result<()> {
    let min = 256 + SPECIALS.len();
    if !(min..=MAX_VOCAB).contains(&a.vocab_size) {
        bail!(
            "--vocab-size {} out of range: {min} (256 bytes + {} special tokens) ..= {MAX_VOCAB}",
            a.vocab_size,
            SPECIALS.len()
        );
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let p = a.output.join(f);
        if p.exists() {
            bail!(
                "{} exists: not overwriting it (choose another -o folder)",
                p.display()
            );
        }
    }
    let sources = collect_sources(&a.corpus)?;

    let split = Split::new(
        SplitPattern::Regex(LLAMA3_REGEX.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("the LLaMA 3 regex: {e}"))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    let bpe = tk(
        BPE::builder().ignore_merges(true).build(),
        "building the BPE model",
    )?;
    let mut tok: Tok = TokenizerImpl::new(bpe);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));

    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(a.vocab_size - SPECIALS.len())
        .min_frequency(a.min_frequency)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();

    // The documents, streamed; a read error stops the stream and is reported after training.
    let failed: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let docs = Docs::new(sources);
    let bytes_read = docs.bytes_read.clone();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] reading the corpus: {msg}",
        )
        .unwrap(),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let (f2, c2, b2, r2) = (
        failed.clone(),
        count.clone(),
        bar.clone(),
        bytes_read.clone(),
    );
    let stream = docs.map_while(move |d| match d {
        Ok(s) => {
            let n = c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 1024 == 0 {
                b2.set_message(format!(
                    "{n} documents, {} MB",
                    r2.load(std::sync::atomic::Ordering::Relaxed) >> 20
                ));
            }
            Some(s)
        }
        Err(e) => {
            *f2.lock().unwrap() = Some(e);
            None
        }
    });
    tk(tok.train(&mut trainer, stream), "training")?;
    bar.finish_and_clear();
    if let Some(e) = failed.lock().unwrap().take() {
        return Err(e);
    }
    let ndocs = count.load(std::sync::atomic::Ordering::Relaxed);
    if ndocs == 0 {
        bail!("empty corpus: no documents (only blank text) in the input files");
    }

    // Special tokens after the learned vocabulary, then BOS added by the post-processor.
    let learned = tok.get_vocab_size(false);
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    tok.add_special_tokens(&specials);
    let ids = SPECIALS
        .iter()
        .map(|s| {
            tok.token_to_id(s)
                .ok_or_else(|| anyhow!("special token {s} missing after adding it"))
        })
        .collect::<Result<Vec<u32>>>()?;
    // The chat template may only write tokens this tokenizer has as special tokens.
    for t in crate::data_prepare::template_specials(CHAT_TEMPLATE) {
        if !SPECIALS.contains(&t) || tok.token_to_id(t).is_none() {
            bail!("internal: the chat template writes {t}, not one of the special tokens added");
        }
    }
    let bos_id = ids[0];
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(|e| anyhow!("{e}"))?
        .try_pair(format!("{BOS} $A {BOS}:1 $B:1"))
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(vec![(BOS.to_string(), bos_id)])
        .build()
        .map_err(|e| anyhow!("the post-processor: {e}"))?;
    tok.with_post_processor(Some(PostProcessorWrapper::Template(post)));

    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let tj = a.output.join("tokenizer.json");
    tk(tok.save(&tj, true), &format!("writing {}", tj.display()))?;

    let mut decoder = serde_json::Map::new();
    for (s, id) in SPECIALS.iter().zip(&ids) {
        decoder.insert(
            id.to_string(),
            json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": true}),
        );
    }
    let cfg: Value = json!({
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "eos_token": EOS,
        "chat_template": CHAT_TEMPLATE,
        // As LLaMA 3's: transformers then decodes as cria does (" !" -> "!").
        "clean_up_tokenization_spaces": true,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let cp = a.output.join("tokenizer_config.json");
    std::fs::write(&cp, serde_json::to_string_pretty(&cfg)? + "\n")
        .with_context(|| format!("writing {}", cp.display()))?;
    let total = tok.get_vocab_size(true);
    eprintln!(
        "{ndocs} documents ({} MB): {total} tokens ({} learned, 256 of them bytes, + {} special){} -> {}",
        bytes_read.load(std::sync::atomic::Ordering::Relaxed) >> 20,
        learned,
        SPECIALS.len(),
        if total < a.vocab_size {
            format!(" of the {} asked: the corpus gave no more merges", a.vocab_size)
        } else {
            String::new()
        },
        a.output.display()
    );
    Ok(())
}
