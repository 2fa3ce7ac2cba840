//! Streaming detokenization: whole characters only, none lost, across byte tokens.

mod common;
use common::*;
use cria_tokenizer::{StreamDecoder, Tokenizer};

fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut d = StreamDecoder::new(tok);
    let parts: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    let mut all: String = parts.concat();
    all.push_str(&d.flush());
    (all, parts)
}

/// For every fixture text and vocabulary: the stream's output is exactly the concatenated pieces,
/// and it never emits a replacement character for text that was valid UTF-8.
#[test]
fn stream_equals_concatenated_pieces() {
    for vocab in ["llama-spm", "llama-bpe", "gpt-2", "smollm2"] {
        let tok = load_gguf(&fixture_model_path(vocab));
        for c in read_fixture(vocab).cases {
            let ids = &c.enc["00"];
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_to_piece(id)).collect();
            let expected = String::from_utf8(bytes).expect("pieces of valid text are valid UTF-8");
            let (all, _) = stream_all(&tok, ids);
            assert_eq!(all, expected, "{vocab}: {:?}", c.text);
            assert!(!all.contains('\u{FFFD}') || c.text.contains('\u{FFFD}'));
        }
    }
}

/// An emoji that SPM spells as four <0xNN> tokens comes out whole on the fourth, nothing before.
#[test]
fn emoji_over_byte_tokens() {
    let tok = load_gguf(&vocab_path("llama-spm"));
    let ids = tok.encode("🦙", false, false);
    // "▁" then the four UTF-8 bytes of U+1F999 as byte tokens.
    let bytes: Vec<&str> = ids[1..].iter().map(|&id| tok.token_text(id)).collect();
    assert_eq!(bytes, ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]);
    let mut d = StreamDecoder::new(&tok);
    assert_eq!(d.push(ids[0]), " ");
    assert_eq!(d.push(ids[1]), "");
    assert_eq!(d.push(ids[2]), "");
    assert_eq!(d.push(ids[3]), "");
    assert_eq!(d.pending_len(), 3);
    assert_eq!(d.push(ids[4]), "🦙");
    assert_eq!(d.flush(), "");
}

/// CJK in byte-level BPE: GPT-2 has no token for most CJK characters, so a character's three
/// bytes land in separate tokens; each character must appear exactly when complete.
#[test]
fn cjk_over_byte_level_pieces() {
    let tok = load_gguf(&vocab_path("gpt-2"));
    let text = "我想在工作";
    let ids = tok.encode(text, false, false);
    assert!(
        ids.len() > text.chars().count(),
        "expected characters split over tokens: {ids:?}"
    );
    let (all, parts) = stream_all(&tok, &ids);
    assert_eq!(all, text);
    // Every emitted part is a run of whole characters of the text, in order.
    let mut rebuilt = String::new();
    for p in &parts {
        rebuilt.push_str(p);
        assert!(text.starts_with(&rebuilt));
    }
    assert!(
        parts.iter().any(|p| p.is_empty()),
        "some tokens must have been held back"
    );
}

/// A truncated character is held back, then flushed as U+FFFD; bytes that can never start a
/// character are replaced immediately and the stream continues.
#[test]
fn invalid_and_truncated_bytes() {
    let tok = load_gguf(&vocab_path("llama-spm"));
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).unwrap();
    let a = tok.token_id("a").unwrap();
    let mut d = StreamDecoder::new(&tok);
    assert_eq!(d.push(byte(0xE6)), "");
    assert_eq!(d.push(byte(0x88)), "");
    assert_eq!(d.flush(), "\u{FFFD}");
    assert_eq!(d.push(byte(0xFF)), "\u{FFFD}");
    assert_eq!(d.push(a), "a");
    assert_eq!(d.push(byte(0xE6)), "");
    // A lead byte followed by ASCII: the lead is invalid, the ASCII is kept.
    assert_eq!(d.push(a), "\u{FFFD}a");
    assert_eq!(d.flush(), "");
}

/// Control tokens are silent by default and rendered with `with_special`.
#[test]
fn control_tokens_in_stream() {
    let tok = load_gguf(&smollm2_path());
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_control(im_end));
    assert_eq!(StreamDecoder::new(&tok).push(im_end), "");
    assert_eq!(
        StreamDecoder::new(&tok).with_special(true).push(im_end),
        "<|im_end|>"
    );
    assert_eq!(tok.token_to_piece(im_end), b"");
    assert_eq!(tok.token_to_piece_special(im_end, true), b"<|im_end|>");
}

/// Out-of-range ids decode to nothing rather than panicking.
#[test]
fn out_of_range_ids() {
    let tok = load_gguf(&vocab_path("llama-bpe"));
    let n = tok.vocab_size() as u32;
    assert_eq!(tok.token_to_piece(n), b"");
    assert_eq!(tok.token_text(u32::MAX), "");
    assert!(!tok.is_eog(u32::MAX));
    let hello = tok.encode("Hello", false, false);
    assert_eq!(tok.decode(&[n, hello[0], u32::MAX]), "Hello");
    let mut d = StreamDecoder::new(&tok);
    assert_eq!(d.push(u32::MAX), "");
}

/// What chat templates need from the tokenizer, for SmolLM2's GGUF.
#[test]
fn template_accessors() {
    let tok = load_gguf(&smollm2_path());
    assert_eq!(tok.kind(), "bpe(smollm)");
    assert_eq!(tok.bos_text(), "<|im_start|>");
    assert_eq!(tok.eos_text(), "<|im_end|>");
    assert!(!tok.add_bos());
    let t = tok.chat_template().expect("SmolLM2 ships a chat template");
    assert!(t.contains("<|im_start|>") && t.contains("add_generation_prompt"));
    let gpt2 = load_gguf(&vocab_path("gpt-2"));
    assert_eq!(gpt2.chat_template(), None);
    assert_eq!(gpt2.bos_text(), "<|endoftext|>");
}

/// `push_into` with one reused buffer gives, token by token, what `push` returns; invalid bytes
/// mid-stream (a lone continuation byte token) become U+FFFD in both.
#[test]
fn push_into_matches_push() {
    for vocab in ["llama-spm", "llama-bpe", "gpt-2", "smollm2"] {
        let tok = load_gguf(&fixture_model_path(vocab));
        for c in read_fixture(vocab).cases {
            let ids = &c.enc["00"];
            let (_, parts) = stream_all(&tok, ids);
            let mut d = StreamDecoder::new(&tok);
            let mut buf = String::new();
            for (&id, want) in ids.iter().zip(&parts) {
                buf.clear();
                d.push_into(id, &mut buf);
                assert_eq!(&buf, want, "{vocab}: {:?}", c.text);
            }
        }
    }
}
