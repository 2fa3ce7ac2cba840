//! Rendering examples into token ids and loss masks through a chat template and a tokenizer given
//! as closures (a ChatML template and a byte tokenizer with special tokens, written here).

use cria_train::data::{render, Example, Message, RenderError, RenderOptions, Role, Tokens};

const BOS: u32 = 0;
const IM_START: u32 = 1;
const IM_END: u32 = 2;
const EOS: u32 = 3;
const SPECIALS: [(&str, u32); 3] = [
    ("<|im_start|>", IM_START),
    ("<|im_end|>", IM_END),
    ("</s>", EOS),
];

/// Bytes as ids 10.., the special tokens parsed out of the text, BOS when the text starts the
/// sequence.
fn encode(text: &str, at_start: bool) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    if at_start {
        ids.push(BOS);
    }
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for (s, id) in SPECIALS {
            if let Some(r) = rest.strip_prefix(s) {
                ids.push(id);
                rest = r;
                continue 'outer;
            }
        }
        ids.push(rest.as_bytes()[0] as u32 + 10);
        rest = &rest[1..];
    }
    Ok(ids)
}

fn decode(ids: &[u32]) -> String {
    let mut bytes = Vec::new();
    for &id in ids {
        match SPECIALS.iter().find(|(_, i)| *i == id) {
            Some((s, _)) => bytes.extend_from_slice(s.as_bytes()),
            None if id == BOS => bytes.extend_from_slice(b"<s>"),
            None => bytes.push((id - 10) as u8),
        }
    }
    String::from_utf8(bytes).unwrap()
}

fn chatml(msgs: &[Message], gen: bool) -> Result<String, String> {
    let mut s = String::new();
    for m in msgs {
        s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content);
    }
    if gen {
        s += "<|im_start|>assistant\n";
    }
    Ok(s)
}

/// The text of the trained tokens, and of the others.
fn split(t: &Tokens) -> (String, String) {
    assert_eq!(t.ids.len(), t.mask.len());
    let pick = |want: bool| -> Vec<u32> {
        t.ids
            .iter()
            .zip(&t.mask)
            .filter(|(_, &m)| m == want)
            .map(|(&i, _)| i)
            .collect()
    };
    (decode(&pick(true)), decode(&pick(false)))
}

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
    }
}

fn conversation() -> Example {
    Example::Messages(vec![
        msg(Role::System, "Be terse."),
        msg(Role::User, "Capital of France?"),
        msg(Role::Assistant, "Paris."),
        msg(Role::User, "And Italy?"),
        msg(Role::Assistant, "Rome."),
    ])
}

const OPTS: RenderOptions = RenderOptions {
    eos: Some(EOS),
    max_tokens: None,
};

/// Assistant turns only (content and the template's closing, not the newline after it), the same
/// ids as the whole text
/// encoded at once, the BOS once at the start.
#[test]
fn messages_train_on_assistant_turns() {
    let ex = conversation();
    let t = render(&ex, chatml, encode, &OPTS).unwrap();
    let (trained, other) = split(&t);
    assert_eq!(trained, "Paris.<|im_end|>Rome.<|im_end|>");
    assert_eq!(
        other,
        "<s><|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n\
         <|im_start|>assistant\n\n<|im_start|>user\nAnd Italy?<|im_end|>\n<|im_start|>assistant\n\n"
    );
    let whole = encode(
        &chatml(ex.messages().unwrap().as_slice(), false).unwrap(),
        true,
    )
    .unwrap();
    assert_eq!(t.ids, whole);
    assert_eq!(t.ids.iter().filter(|&&i| i == BOS).count(), 1);
    assert_eq!(t.trained(), "Paris.".len() + "Rome.".len() + 2);
    // The mask is contiguous per turn: false, true, false, true, false (the last newline).
    let runs = t.mask.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(runs, 4);
}

/// A conversation that ends with a user turn: the trailing turn is not trained.
#[test]
fn trailing_turns_are_not_trained() {
    let ex = Example::Messages(vec![
        msg(Role::User, "q"),
        msg(Role::Assistant, "a"),
        msg(Role::User, "more"),
    ]);
    let t = render(&ex, chatml, encode, &OPTS).unwrap();
    assert_eq!(split(&t).0, "a<|im_end|>");
    assert!(decode(&t.ids).ends_with("<|im_start|>user\nmore<|im_end|>\n"));
}

#[test]
fn alpaca_renders_through_the_template() {
    let ex = Example::Alpaca {
        instruction: "Translate to French".into(),
        input: "cat".into(),
        output: "chat".into(),
    };
    let t = render(&ex, chatml, encode, &OPTS).unwrap();
    let (trained, other) = split(&t);
    assert_eq!(trained, "chat<|im_end|>");
    assert_eq!(
        other,
        "<s><|im_start|>user\nTranslate to French\n\ncat<|im_end|>\n<|im_start|>assistant\n\n"
    );
}

#[test]
fn prompt_completion_trains_the_completion_and_eos() {
    let ex = Example::PromptCompletion {
        prompt: "2+2=".into(),
        completion: "4".into(),
    };
    let t = render(&ex, chatml, encode, &OPTS).unwrap();
    assert_eq!(
        t.ids,
        [
            BOS,
            b'2' as u32 + 10,
            b'+' as u32 + 10,
            b'2' as u32 + 10,
            b'=' as u32 + 10,
            b'4' as u32 + 10,
            EOS
        ]
    );
    assert_eq!(t.mask, [false, false, false, false, false, true, true]);
    // Without EOS and with an empty prompt, the completion starts the sequence: its BOS is in
    // the trained span (harmless: nothing precedes it, so it is never a target).
    let ex = Example::PromptCompletion {
        prompt: "".into(),
        completion: "x".into(),
    };
    let t = render(&ex, chatml, encode, &RenderOptions::default()).unwrap();
    assert_eq!(
        (t.ids, t.mask),
        (vec![BOS, b'x' as u32 + 10], vec![true, true])
    );
}

#[test]
fn text_trains_everything_and_eos_once() {
    let t = render(&Example::Text("hi".into()), chatml, encode, &OPTS).unwrap();
    assert_eq!(t.ids, [BOS, b'h' as u32 + 10, b'i' as u32 + 10, EOS]);
    assert_eq!(t.mask, [true; 4]);
    let t = render(&Example::Text("hi</s>".into()), chatml, encode, &OPTS).unwrap();
    assert_eq!(t.ids, [BOS, b'h' as u32 + 10, b'i' as u32 + 10, EOS]);
}

#[test]
fn render_errors() {
    // A template that drops earlier assistant turns' content (as some "thinking" templates do):
    // prefixes do not line up.
    let drops = |m: &[Message], gen: bool| {
        let last = m.iter().rposition(|x| x.role == Role::Assistant);
        let kept: Vec<Message> = m
            .iter()
            .enumerate()
            .map(|(i, x)| match x.role {
                Role::Assistant if Some(i) != last => msg(Role::Assistant, ""),
                _ => x.clone(),
            })
            .collect();
        chatml(&kept, gen)
    };
    assert_eq!(
        render(&conversation(), drops, encode, &OPTS),
        Err(RenderError::NotPrefix(2))
    );

    let broken = |_: &[Message], _: bool| Err::<String, _>("undefined variable".to_string());
    let err = render(&conversation(), broken, encode, &OPTS).unwrap_err();
    assert_eq!(err.to_string(), "chat template: undefined variable");

    let no_enc = |_: &str, _: bool| Err::<Vec<u32>, _>("bad byte".to_string());
    let err = render(&Example::Text("x".into()), chatml, no_enc, &OPTS).unwrap_err();
    assert_eq!(err, RenderError::Encode("bad byte".into()));

    // No assistant turn (built directly; the reader refuses such lines).
    let ex = Example::Messages(vec![msg(Role::User, "hi")]);
    assert_eq!(
        render(&ex, chatml, encode, &OPTS),
        Err(RenderError::NoAssistant)
    );
    // A template that writes nothing for an empty assistant turn: nothing to learn.
    let bare = |m: &[Message], _: bool| {
        Ok::<_, String>(m.iter().map(|x| x.content.as_str()).collect::<String>())
    };
    let ex = Example::Messages(vec![msg(Role::User, "hi"), msg(Role::Assistant, "")]);
    assert_eq!(
        render(&ex, bare, encode, &OPTS),
        Err(RenderError::NoAssistant)
    );
    // A completion that encodes to nothing, no EOS.
    let empty = |s: &str, _: bool| Ok::<_, String>(if s == "x" { vec![] } else { vec![7] });
    let ex = Example::PromptCompletion {
        prompt: "p".into(),
        completion: "x".into(),
    };
    assert_eq!(
        render(&ex, chatml, empty, &RenderOptions::default()),
        Err(RenderError::NoTrainedTokens)
    );

    // Longer than the context.
    let opts = RenderOptions {
        eos: Some(EOS),
        max_tokens: Some(3),
    };
    let err = render(&Example::Text("hi".into()), chatml, encode, &opts).unwrap_err();
    assert_eq!(err, RenderError::TooLong { tokens: 4, max: 3 });
    assert_eq!(err.to_string(), "4 tokens, longer than the context (3)");
    let opts = RenderOptions {
        max_tokens: Some(4),
        ..opts
    };
    assert!(render(&Example::Text("hi".into()), chatml, encode, &opts).is_ok());
}
