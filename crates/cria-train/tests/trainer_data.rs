//! Pre-tokenized training lines (`{"input_ids", "labels"}`, HF's convention) into the exact
//! sequences the trainer feeds the model (targets shifted by one).

use cria_train::data::{example_seq, parse_line, read_jsonl, Example, Limits, RenderOptions};

fn no_chat(_: &[cria_train::data::Message], _: bool) -> Result<String, String> {
    Err("no template".into())
}

fn no_encode(_: &str, _: bool) -> Result<Vec<u32>, String> {
    Err("no tokenizer".into())
}

fn seq(line: &str, max: Option<usize>) -> Result<cria_train::model::Seq, String> {
    let ex = parse_line(line).map_err(|e| e.to_string())?;
    let opts = RenderOptions {
        eos: Some(2),
        max_tokens: max,
    };
    example_seq(&ex, no_chat, no_encode, &opts, 100).map_err(|e| e.to_string())
}

#[test]
fn pretokenized_lines_become_shifted_sequences() {
    // Labels given: unshifted, -100 masked; they may differ from the ids.
    let s = seq(
        r#"{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 9]}"#,
        None,
    )
    .unwrap();
    assert_eq!(s.tokens, vec![1, 5, 6, 7]);
    assert_eq!(s.targets, vec![-100, 6, 9, -100]);
    // No labels: every next token is a target; no EOS is added to pre-tokenized input.
    let s = seq(r#"{"input_ids": [3, 4, 5]}"#, None).unwrap();
    assert_eq!(s.targets, vec![4, 5, -100]);
    assert_eq!(
        parse_line(r#"{"input_ids": [3], "labels": null}"#).unwrap(),
        Example::Tokens {
            input_ids: vec![3],
            labels: None
        }
    );
}

#[test]
fn bad_pretokenized_lines_are_errors() {
    let cases = [
        (r#"{"input_ids": []}"#, "empty"),
        (r#"{"input_ids": [1, -2]}"#, "not a token id"),
        (r#"{"input_ids": [1, 2.5]}"#, "not an integer"),
        (r#"{"input_ids": "1 2"}"#, "array of integers"),
        (r#"{"input_ids": [1, 2], "labels": [1]}"#, "has 1 values"),
        (
            r#"{"input_ids": [1, 2], "labels": [1, -5]}"#,
            "a token id or -100",
        ),
        (r#"{"input_ids": [1, 200]}"#, "outside the vocabulary"),
        (
            r#"{"input_ids": [1, 2], "labels": [1, 300]}"#,
            "outside the vocabulary",
        ),
        // Only the first token is labelled: nothing left to predict after the shift.
        (
            r#"{"input_ids": [1, 2], "labels": [1, -100]}"#,
            "no token to learn from",
        ),
        (r#"{"input_ids": [1]}"#, "no token to learn from"),
        (r#"{"input_ids": [1, 2, 3, 4]}"#, "longer than the context"),
    ];
    for (line, want) in cases {
        let e = seq(line, Some(3)).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
    // In a file: reported by line number beside the good lines.
    let text = "{\"input_ids\": [1, 2]}\n{\"input_ids\": []}\n{\"text\": \"hi\"}\n";
    let ds = read_jsonl(text.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.errors.len(), 1);
    assert_eq!(ds.errors[0].line, 2);
}
