//! Reading training JSONL: every shape, every per-line error with its line number, the limits.

use cria_train::data::{
    parse_line, read_jsonl, read_jsonl_file, DataError, Example, Limits, LineErrorKind, Message,
    Role,
};
use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
    }
}

#[test]
fn every_shape() {
    let ds = read_jsonl_file(&path("shapes.jsonl"), &Limits::default()).unwrap();
    assert_eq!(ds.errors, []);
    let want = vec![
        (
            1,
            Example::Messages(vec![
                msg(Role::System, "You are terse."),
                msg(Role::User, "Capital of France?"),
                msg(Role::Assistant, "Paris."),
                msg(Role::User, "And Italy?"),
                msg(Role::Assistant, "Rome."),
            ]),
        ),
        (
            2,
            Example::PromptCompletion {
                prompt: "2+2=".into(),
                completion: "4".into(),
            },
        ),
        (
            3,
            Example::Alpaca {
                instruction: "Translate to French".into(),
                input: "cat".into(),
                output: "chat".into(),
            },
        ),
        (
            4,
            Example::Alpaca {
                instruction: "Say hi".into(),
                input: "".into(),
                output: "Hi!".into(),
            },
        ),
        // line 5 is blank: skipped
        (6, Example::Text("Once upon a time, héllo 🌍.".into())),
        (
            7,
            Example::Messages(vec![
                msg(Role::User, "Two parts"),
                msg(Role::Assistant, "ok"),
                msg(Role::Tool, "{}"),
            ]),
        ),
        (8, Example::Text("crlf line".into())),
    ];
    assert_eq!(ds.examples, want);
    // Alpaca as a conversation: instruction, blank line, input.
    assert_eq!(
        want[2].1.messages().unwrap(),
        [
            msg(Role::User, "Translate to French\n\ncat"),
            msg(Role::Assistant, "chat")
        ]
    );
    assert_eq!(want[3].1.messages().unwrap()[0], msg(Role::User, "Say hi"));
    assert_eq!(want[4].1.messages(), None);
}

#[test]
fn bom_and_last_line_without_newline() {
    let ds = read_jsonl_file(&path("bom.jsonl"), &Limits::default()).unwrap();
    assert_eq!(
        ds.examples,
        [
            (1, Example::Text("bom first".into())),
            (2, Example::Text("second".into()))
        ]
    );
}

fn is_json(k: &LineErrorKind) -> bool {
    matches!(k, LineErrorKind::Json(_))
}

/// errors.jsonl: line by line, the error each line must give (by kind and a word of the message).
#[test]
fn every_error_with_its_line() {
    let ds = read_jsonl_file(&path("errors.jsonl"), &Limits::default()).unwrap();
    assert_eq!(
        ds.examples,
        [
            (1, Example::Text("fine".into())),
            (17, Example::Text("last fine".into()))
        ]
    );
    type Check = fn(&LineErrorKind) -> bool;
    let want: [(usize, Check, &str); 16] = [
        (2, is_json, "EOF"),
        (
            3,
            |k| matches!(k, LineErrorKind::UnknownShape(_)),
            "an array, not an object",
        ),
        (
            4,
            |k| matches!(k, LineErrorKind::UnknownShape(_)),
            "\"title\"",
        ),
        (
            5,
            |k| matches!(k, LineErrorKind::UnknownShape(_)),
            "several shapes",
        ),
        (
            6,
            |k| matches!(k, LineErrorKind::Empty(_)),
            "\"text\" is empty",
        ),
        (
            7,
            |k| matches!(k, LineErrorKind::Empty(_)),
            "\"messages\" is empty",
        ),
        (
            8,
            |k| matches!(k, LineErrorKind::Empty(_)),
            "no assistant turn",
        ),
        (
            9,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "message 0: unknown role \"robot\"",
        ),
        (
            10,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "message 0: missing \"content\"",
        ),
        (
            11,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "type \"image_url\"",
        ),
        (
            12,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "missing \"completion\"",
        ),
        (
            13,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "\"completion\" must be a string, not a number",
        ),
        (
            14,
            |k| matches!(k, LineErrorKind::Empty(_)),
            "\"completion\" is empty",
        ),
        (
            15,
            |k| matches!(k, LineErrorKind::Empty(_)),
            "\"output\" is empty",
        ),
        (
            16,
            |k| matches!(k, LineErrorKind::BadField(_)),
            "must be an array, not a string",
        ),
        (18, |k| *k == LineErrorKind::NotUtf8, "not UTF-8"),
    ];
    assert_eq!(ds.errors.len(), want.len(), "{:#?}", ds.errors);
    for (e, (line, kind, words)) in ds.errors.iter().zip(want) {
        let text = e.to_string();
        assert_eq!(e.line, line, "{text}");
        assert!(kind(&e.kind), "line {line}: {:?}", e.kind);
        assert!(text.starts_with(&format!("line {line}: ")), "{text}");
        assert!(
            text.contains(words),
            "line {line}: {text:?} lacks {words:?}"
        );
    }
    // Strict: the first error.
    let err = ds.strict().unwrap_err();
    assert!(
        err.to_string().starts_with("line 2: not valid JSON"),
        "{err}"
    );
}

#[test]
fn files_without_examples_are_errors() {
    for (name, errors) in [
        ("empty.jsonl", 0),
        ("blank.jsonl", 0),
        ("no_assistant.jsonl", 2),
    ] {
        match read_jsonl_file(&path(name), &Limits::default()) {
            Err(DataError::NoExamples(n)) => assert_eq!(n, errors, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let err = read_jsonl_file(&path("missing.jsonl"), &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("missing.jsonl"), "{err}");
}

#[test]
fn line_length_and_count_limits() {
    let long = format!("{{\"text\": \"{}\"}}", "x".repeat(100));
    let input = format!("{{\"text\": \"a\"}}\n{long}\n{{\"text\": \"b\"}}\n");
    let limits = Limits {
        max_line_bytes: 64,
        max_lines: 10,
    };
    // A BufReader smaller than the line: the long line is skipped in pieces, the next one read.
    let ds = read_jsonl(
        std::io::BufReader::with_capacity(16, input.as_bytes()),
        &limits,
    )
    .unwrap();
    assert_eq!(
        ds.examples,
        [
            (1, Example::Text("a".into())),
            (3, Example::Text("b".into()))
        ]
    );
    assert_eq!(ds.errors.len(), 1);
    assert_eq!(ds.errors[0].line, 2);
    assert_eq!(ds.errors[0].kind, LineErrorKind::TooLong(64));
    assert_eq!(ds.errors[0].to_string(), "line 2: longer than 64 bytes");
    // Exactly at the limit is accepted.
    let at = format!("{{\"text\": \"{}\"}}", "y".repeat(64 - 12));
    assert_eq!(at.len(), 64);
    let ds = read_jsonl(at.as_bytes(), &limits).unwrap();
    assert_eq!(ds.examples.len(), 1);

    let many = "{\"text\": \"a\"}\n".repeat(11);
    let err = read_jsonl(many.as_bytes(), &limits).unwrap_err();
    assert!(matches!(err, DataError::TooManyLines(10)), "{err}");
    assert_eq!(
        read_jsonl("{\"text\": \"a\"}\n".repeat(10).as_bytes(), &limits)
            .unwrap()
            .examples
            .len(),
        10
    );
}

#[test]
fn parse_line_alone() {
    assert_eq!(
        parse_line(r#"{"text": "t", "meta": {"a": 1}}"#),
        Ok(Example::Text("t".into()))
    );
    assert!(matches!(
        parse_line("null"),
        Err(LineErrorKind::UnknownShape(_))
    ));
    assert!(matches!(
        parse_line(r#"{"instruction": 3, "output": "o"}"#),
        Err(LineErrorKind::BadField(_))
    ));
}
