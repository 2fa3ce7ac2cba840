//! Encoding speed on 100 KB texts of several shapes (tests/common: prose, one unbroken word,
//! whitespace, CJK, digits) for every test vocabulary: the figures tests/robustness.rs's
//! large-input test no longer asserts. Best of 5 runs each; reads the vocabularies from
//! $CRIA_REF_DIR (scripts/fetch-refs.sh).
//!
//!     cargo bench -p cria-tokenizer --bench encode_large

#[path = "../tests/common/mod.rs"]
mod common;

use common::{fixture_model_path, large_inputs, load_gguf, VOCABS};
use std::time::Instant;

fn main() {
    for vocab in VOCABS {
        let t = Instant::now();
        let tok = load_gguf(&fixture_model_path(vocab));
        println!(
            "{vocab:9} from_gguf: {} tokens in {:.0} ms",
            tok.vocab_size(),
            t.elapsed().as_secs_f64() * 1e3
        );
        for (name, text) in &large_inputs() {
            let mut best = f64::INFINITY;
            let mut n = 0;
            for _ in 0..5 {
                let t = Instant::now();
                n = tok.encode(text, true, true).len();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{vocab:9} {name:8} {:6} bytes -> {n:6} tokens in {:7.1} ms ({:.1} MB/s)",
                text.len(),
                best * 1e3,
                text.len() as f64 / best / 1e6
            );
        }
    }
}
