//! GBNF parser: text -> [`Grammar`], with llama.cpp's syntax and its rewrite of repetitions.
//!
//! Syntax (llama.cpp `grammars/README.md`): `name ::= alternatives` rules, `|` alternatives,
//! sequences of `"literal"`, `[class]` / `[^class]` (ranges `a-z`), `.` (any code point), rule
//! names, `( group )`, token references `<[id]>` / `<text>` and their negations `!<...>`, postfix
//! `*` `+` `?` `{m}` `{m,}` `{m,n}`, `#` comments. Escapes: `\x..` `\u....` `\U........`
//! `\t` `\r` `\n` `\\` `\"` `\[` `\]` `\-`. A rule ends at a newline unless the newline is
//! inside parentheses or follows `|` or `::=`, exactly as in llama.cpp, so that grammar files
//! written for llama.cpp mean the same thing here.
//!
//! Repetitions are rewritten into fresh rules the way llama.cpp does (`S*` -> `R ::= S R |`,
//! `S{m,n}` -> m copies of S then a chain of n-m optional rules), which keeps the matcher a plain
//! pushdown recognizer.
//!
//! Bounded by [`Limits`]: group nesting (`max_nesting`), the size after expanding repetitions
//! (`max_elems`, checked before anything is allocated) and a deadline; compilation is linear
//! in the size of the result apart from the hashing of names and classes.

use super::{CharClass, Clock, Elem, Grammar, GrammarError, Limits, TokenRef, TIME_BUDGET_MSG};
use std::collections::HashMap;

/// llama.cpp's bound on repetition counts (`MAX_REPETITION_THRESHOLD`), since each repetition is
/// a copy in the rule set. A larger minimum is an error, as in llama.cpp; so is a larger maximum,
/// where llama.cpp silently drops it (the output would be unbounded while the grammar promised a
/// bound): `x*` or `x{m,}` says "no bound" explicitly.
const MAX_REPETITION: u64 = 2000;

/// One symbol of a sequence before flattening.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sym {
    Chars(u32),
    Ref(u32),
    Token(u32),
}

struct Parser<'a> {
    src: &'a str,
    pos: usize, // byte offset into src
    ids: HashMap<String, u32>,
    names: Vec<String>,
    rules: Vec<Option<Vec<Vec<Sym>>>>,
    defined_at: Vec<Option<usize>>,
    first_use: Vec<Option<usize>>,
    classes: Vec<CharClass>,
    class_ids: HashMap<CharClass, u32>,
    tokens: Vec<TokenRef>,
    /// Elements and rules allocated so far (the size budget), and its limit.
    size: usize,
    max_size: usize,
    /// Groups open around `pos`, and the limit.
    depth: usize,
    max_depth: usize,
    clock: Clock,
    /// (byte offset, line, column) of the last position `line_col` was asked for: positions
    /// come in increasing order, so each is found from the previous one in linear total time.
    cursor: (usize, usize, usize),
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

impl<'a> Parser<'a> {
    fn err<T>(&self, at: usize, msg: impl Into<String>) -> Result<T, GrammarError> {
        Err(GrammarError::at(self.src, at, msg))
    }

    fn too_large<T>(&self, at: usize) -> Result<T, GrammarError> {
        self.err(
            at,
            format!(
                "the grammar is too large: more than {} elements after expanding repetitions",
                self.max_size
            ),
        )
    }

    /// Account for `n` more elements (or rule-equivalents) allocated at `at`.
    fn charge(&mut self, n: usize, at: usize) -> Result<(), GrammarError> {
        match self.size.checked_add(n) {
            Some(s) if s <= self.max_size => {
                self.size = s;
                Ok(())
            }
            _ => self.too_large(at),
        }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    fn line_col(&mut self, at: usize) -> (usize, usize) {
        let (pos, mut line, mut col) = self.cursor;
        if at < pos {
            return GrammarError::line_col(self.src, at);
        }
        for c in self.src[pos..at].chars() {
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        self.cursor = (at, line, col);
        (line, col)
    }

    fn tick(&mut self, at: usize) -> Result<(), GrammarError> {
        if self.clock.expired() {
            return self.err(at, TIME_BUDGET_MSG);
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + k).copied()
    }

    /// What is at `pos`, for error messages: the next few characters or "end of input".
    fn here(&self) -> String {
        let rest = &self.src[self.pos..];
        match rest.chars().next() {
            None => "end of input".into(),
            Some('\n') | Some('\r') => "end of line".into(),
            Some(_) => {
                let s: String = rest.chars().take_while(|&c| c != '\n').take(12).collect();
                format!("'{s}'")
            }
        }
    }

    fn skip_space(&mut self, newline_ok: bool) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' => self.pos += 1,
                b'#' => {
                    while let Some(b) = self.peek() {
                        if b == b'\n' || b == b'\r' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                b'\r' | b'\n' if newline_ok => self.pos += 1,
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<&'a str, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.err(
                start,
                format!("expecting a rule name, found {}", self.here()),
            );
        }
        Ok(&self.src[start..self.pos])
    }

    fn int(&mut self) -> Result<u64, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.err(
                start,
                format!("expecting an integer, found {}", self.here()),
            );
        }
        self.src[start..self.pos]
            .parse()
            .or_else(|_| self.err(start, "integer too large"))
    }

    fn symbol(&mut self, name: &str, at: usize) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            if self.first_use[id as usize].is_none() {
                self.first_use[id as usize] = Some(at);
            }
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.rules.push(None);
        self.defined_at.push(None);
        self.first_use.push(Some(at));
        // A new rule costs about as much as its name in elements (8 bytes each), at least one.
        self.size = self.size.saturating_add(1 + name.len() / 8);
        id
    }

    /// A fresh rule for a group or repetition, named after its parent like llama.cpp's `name_N`.
    /// Its name is charged to the size budget too (8 bytes = one element).
    fn fresh(&mut self, base: &str, at: usize) -> Result<u32, GrammarError> {
        let id = self.names.len() as u32;
        let name = format!("{base}_{id}");
        self.charge(1 + name.len() / 8, at)?;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.rules.push(None);
        self.defined_at.push(Some(at));
        self.first_use.push(None);
        Ok(id)
    }

    fn class(&mut self, c: CharClass) -> u32 {
        if let Some(&id) = self.class_ids.get(&c) {
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(c.clone());
        self.class_ids.insert(c, id);
        id
    }

    fn hex(&mut self, n: usize) -> Result<u32, GrammarError> {
        let start = self.pos;
        let digits = self.src.get(self.pos..self.pos + n).unwrap_or("");
        if digits.len() != n || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.err(start, format!("expecting {n} hex digits after the escape"));
        }
        self.pos += n;
        let v = u32::from_str_radix(digits, 16).unwrap_or(0);
        if v > 0x10FFFF {
            return self.err(start, format!("code point U+{v:X} is out of range"));
        }
        Ok(v)
    }

    /// One (possibly escaped) character of a literal or class.
    fn char(&mut self) -> Result<u32, GrammarError> {
        let start = self.pos;
        let Some(c) = self.src[self.pos..].chars().next() else {
            return self.err(start, "unexpected end of input");
        };
        self.pos += c.len_utf8();
        if c != '\\' {
            return Ok(c as u32);
        }
        let Some(e) = self.src[self.pos..].chars().next() else {
            return self.err(start, "unexpected end of input after '\\'");
        };
        self.pos += e.len_utf8();
        Ok(match e {
            'x' => self.hex(2)?,
            'u' => self.hex(4)?,
            'U' => self.hex(8)?,
            't' => '\t' as u32,
            'r' => '\r' as u32,
            'n' => '\n' as u32,
            '\\' | '"' | '[' | ']' | '-' => e as u32,
            _ => return self.err(start, format!("unknown escape '\\{e}'")),
        })
    }

    fn alternates(&mut self, rule: &str, id: u32, nested: bool) -> Result<(), GrammarError> {
        let mut alts = vec![self.sequence(rule, nested)?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            self.skip_space(true);
            alts.push(self.sequence(rule, nested)?);
        }
        // One `End` per alternative.
        self.charge(alts.len(), self.pos)?;
        self.rules[id as usize] = Some(alts);
        Ok(())
    }

    fn sequence(&mut self, rule: &str, nested: bool) -> Result<Vec<Sym>, GrammarError> {
        let mut seq: Vec<Sym> = Vec::new();
        // Start of the last item in `seq` (a literal is one item of several symbols);
        // None when there is no item a postfix operator could apply to.
        let mut last: Option<usize> = None;
        while let Some(b) = self.peek() {
            let start = self.pos;
            self.tick(start)?;
            // Whatever this item appends is charged after it (a repetition checks its copies
            // against the budget before making them).
            let before = seq.len();
            match b {
                b'"' => {
                    self.pos += 1;
                    last = Some(seq.len());
                    loop {
                        match self.peek() {
                            None => return self.err(start, "unterminated string literal"),
                            Some(b'"') => break,
                            _ => {
                                let c = self.char()?;
                                let k = self.class(CharClass::single(c));
                                seq.push(Sym::Chars(k));
                            }
                        }
                    }
                    self.pos += 1;
                    if seq.len() == last.unwrap_or(0) {
                        // "" matches the empty string: nothing to repeat.
                        last = None;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return self.err(start, "unterminated character class"),
                            Some(b']') => break,
                            _ => {
                                let lo = self.char()?;
                                let mut hi = lo;
                                if self.peek() == Some(b'-') && self.peek_at(1) != Some(b']') {
                                    self.pos += 1;
                                    if self.peek().is_none() {
                                        return self.err(start, "unterminated character class");
                                    }
                                    let at = self.pos;
                                    hi = self.char()?;
                                    if hi < lo {
                                        return self.err(at, "character range is reversed");
                                    }
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    self.pos += 1;
                    let k = self.class(CharClass::new(negated, ranges));
                    last = Some(seq.len());
                    seq.push(Sym::Chars(k));
                }
                b'.' => {
                    self.pos += 1;
                    let k = self.class(CharClass::any());
                    last = Some(seq.len());
                    seq.push(Sym::Chars(k));
                }
                b'<' | b'!' => {
                    let negated = b == b'!';
                    if negated {
                        self.pos += 1;
                        if self.peek() != Some(b'<') {
                            return self.err(self.pos, "expecting '<' after '!'");
                        }
                    }
                    self.pos += 1;
                    let t = if self.peek() == Some(b'[') {
                        self.pos += 1;
                        let at = self.pos;
                        let id = self.int()?;
                        let id =
                            u32::try_from(id).or_else(|_| self.err(at, "token id too large"))?;
                        if self.peek() != Some(b']') || self.peek_at(1) != Some(b'>') {
                            return self.err(self.pos, "expecting ']>' after the token id");
                        }
                        self.pos += 2;
                        TokenRef::Id { id, negated }
                    } else {
                        let end = match self.src[self.pos..].find(['>', '\n']) {
                            Some(k) if self.src.as_bytes()[self.pos + k] == b'>' => self.pos + k,
                            _ => return self.err(start, "unterminated token reference"),
                        };
                        let text = format!("<{}>", &self.src[self.pos..end]);
                        self.pos = end + 1;
                        TokenRef::Text {
                            text,
                            negated,
                            line_col: self.line_col(start),
                        }
                    };
                    last = Some(seq.len());
                    seq.push(Sym::Token(self.tokens.len() as u32));
                    self.tokens.push(t);
                }
                b'(' => {
                    if self.depth >= self.max_depth {
                        return self.err(
                            start,
                            format!("groups nested deeper than {} levels", self.max_depth),
                        );
                    }
                    self.pos += 1;
                    self.skip_space(true);
                    let sub = self.fresh(rule, start)?;
                    self.depth += 1;
                    self.alternates(rule, sub, true)?;
                    self.depth -= 1;
                    if self.peek() != Some(b')') {
                        return self.err(
                            self.pos,
                            format!(
                                "expecting ')' to close the group at {}, found {}",
                                {
                                    let (l, c) = GrammarError::line_col(self.src, start);
                                    format!("{l}:{c}")
                                },
                                self.here()
                            ),
                        );
                    }
                    self.pos += 1;
                    last = Some(seq.len());
                    seq.push(Sym::Ref(sub));
                }
                b'*' | b'+' | b'?' | b'{' => {
                    self.pos += 1;
                    let (min, max) = match b {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        b'?' => (0, Some(1)),
                        _ => {
                            self.skip_space(nested);
                            let min = self.int()?;
                            self.skip_space(nested);
                            let max = match self.peek() {
                                Some(b'}') => Some(min),
                                Some(b',') => {
                                    self.pos += 1;
                                    self.skip_space(nested);
                                    if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                                        let at = self.pos;
                                        let max = self.int()?;
                                        if max < min {
                                            return self.err(
                                                at,
                                                "repetition maximum is below its minimum",
                                            );
                                        }
                                        self.skip_space(nested);
                                        Some(max)
                                    } else {
                                        None
                                    }
                                }
                                _ => {
                                    return self.err(
                                        self.pos,
                                        format!(
                                            "expecting ',' or '}}' in a repetition, found {}",
                                            self.here()
                                        ),
                                    )
                                }
                            };
                            if self.peek() != Some(b'}') {
                                return self.err(
                                    self.pos,
                                    format!(
                                        "expecting '}}' to close the repetition, found {}",
                                        self.here()
                                    ),
                                );
                            }
                            self.pos += 1;
                            if min > MAX_REPETITION {
                                return self.err(
                                    start,
                                    format!("repetition minimum {min} exceeds {MAX_REPETITION}"),
                                );
                            }
                            if let Some(max) = max.filter(|&m| m > MAX_REPETITION) {
                                return self.err(
                                    start,
                                    format!(
                                        "repetition maximum {max} exceeds {MAX_REPETITION} (it could not be honoured; write {{{min},}} for no bound)"
                                    ),
                                );
                            }
                            (min, max)
                        }
                    };
                    let Some(l) = last.take() else {
                        return self.err(
                            start,
                            format!("'{}' has nothing before it to repeat", b as char),
                        );
                    };
                    self.repeat(rule, &mut seq, l, min, max, start)?;
                }
                _ if is_word(b) => {
                    let name = self.name()?;
                    let id = self.symbol(name, start);
                    last = Some(seq.len());
                    seq.push(Sym::Ref(id));
                }
                _ => break,
            }
            if seq.len() > before {
                self.charge(seq.len() - before, start)?;
            }
            self.skip_space(nested);
        }
        Ok(seq)
    }

    /// Rewrite `seq[from..]{min,max}` in place (llama.cpp's scheme):
    /// `S{m,n}` -> S (m times) `R(n-m)` with `R(k) ::= S R(k-1) |` and `R(1) ::= S |`;
    /// `S{m,}` -> S (m times) `R` with `R ::= S R |`.
    ///
    /// The copies in `seq` are checked against the size budget before they are made (the
    /// caller charges them); the new rules are charged here, also before they are made.
    fn repeat(
        &mut self,
        rule: &str,
        seq: &mut Vec<Sym>,
        from: usize,
        min: u64,
        max: Option<u64>,
        at: usize,
    ) -> Result<(), GrammarError> {
        let item: Vec<Sym> = seq[from..].to_vec();
        let n = item.len() as u64;
        // Each optional copy is a rule `R ::= S R' |`: the item, a reference, two ends.
        let optional = max.map_or(1, |m| m - min);
        let in_seq = n.checked_mul(min);
        let in_rules = (n + 3).checked_mul(optional);
        let fits = in_seq
            .zip(in_rules)
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|c| c.checked_add(self.size as u64))
            .is_some_and(|total| total <= self.max_size as u64);
        if !fits {
            return self.too_large(at);
        }
        seq.truncate(from);
        for _ in 0..min {
            seq.extend_from_slice(&item);
        }
        match max {
            None => {
                let r = self.fresh(rule, at)?;
                self.charge(item.len() + 3, at)?;
                let mut body = item.clone();
                body.push(Sym::Ref(r));
                self.rules[r as usize] = Some(vec![body, vec![]]);
                seq.push(Sym::Ref(r));
            }
            Some(max) => {
                let mut prev: Option<u32> = None;
                for _ in min..max {
                    self.tick(at)?;
                    let r = self.fresh(rule, at)?;
                    self.charge(item.len() + 3, at)?;
                    let mut body = item.clone();
                    if let Some(p) = prev {
                        body.push(Sym::Ref(p));
                    }
                    self.rules[r as usize] = Some(vec![body, vec![]]);
                    prev = Some(r);
                }
                if let Some(p) = prev {
                    seq.push(Sym::Ref(p));
                }
            }
        }
        Ok(())
    }

    fn rule(&mut self) -> Result<(), GrammarError> {
        let start = self.pos;
        self.tick(start)?;
        let name = self.name()?;
        self.skip_space(false);
        if !self.src[self.pos..].starts_with("::=") {
            return self.err(
                self.pos,
                format!("expecting '::=' after '{name}', found {}", self.here()),
            );
        }
        self.pos += 3;
        self.skip_space(true);
        let id = self.symbol(name, start);
        if self.first_use[id as usize] == Some(start) {
            self.first_use[id as usize] = None;
        }
        if let Some(prev) = self.defined_at[id as usize] {
            let (l, c) = GrammarError::line_col(self.src, prev);
            return self.err(
                start,
                format!("rule '{name}' is already defined at {l}:{c}"),
            );
        }
        self.defined_at[id as usize] = Some(start);
        self.alternates(name, id, false)?;
        match self.peek() {
            None | Some(b'\n') => {}
            Some(b'\r') => {}
            Some(_) => {
                return self.err(
                    self.pos,
                    format!(
                        "expecting end of line after the rule, found {}",
                        self.here()
                    ),
                )
            }
        }
        self.skip_space(true);
        Ok(())
    }
}

/// Parse GBNF text; `root` names the start rule (llama.cpp's default is "root").
pub(super) fn parse(src: &str, root: &str, limits: &Limits) -> Result<Grammar, GrammarError> {
    let mut p = Parser {
        src,
        pos: 0,
        ids: HashMap::new(),
        names: Vec::new(),
        rules: Vec::new(),
        defined_at: Vec::new(),
        first_use: Vec::new(),
        classes: Vec::new(),
        class_ids: HashMap::new(),
        tokens: Vec::new(),
        size: 0,
        max_size: limits.max_elems,
        depth: 0,
        max_depth: limits.max_nesting,
        clock: limits.clock(),
        cursor: (0, 1, 1),
    };
    p.skip_space(true);
    while p.pos < src.len() {
        p.rule()?;
    }
    if p.size > p.max_size {
        return p.too_large(src.len());
    }
    for (i, r) in p.rules.iter().enumerate() {
        if r.is_none() {
            let at = p.first_use[i].unwrap_or(0);
            return p.err(at, format!("undefined rule '{}'", p.names[i]));
        }
    }
    let Some(&root_id) = p.ids.get(root) else {
        return Err(GrammarError {
            line: 1,
            col: 1,
            msg: format!("the grammar has no '{root}' rule"),
        });
    };
    let rules: Vec<Vec<Vec<Sym>>> = p.rules.into_iter().map(|r| r.unwrap_or_default()).collect();
    check_left_recursion(&rules, &p.names, &p.defined_at, src, &mut p.clock)?;

    // Flatten: every alternative is its elements followed by End.
    let mut elems = Vec::new();
    let mut alts = Vec::with_capacity(rules.len());
    for r in &rules {
        let mut starts = Vec::with_capacity(r.len());
        for a in r {
            starts.push(elems.len() as u32);
            elems.extend(a.iter().map(|s| match *s {
                Sym::Chars(k) => Elem::Chars(k),
                Sym::Ref(r) => Elem::Ref(r),
                Sym::Token(t) => Elem::Token(t),
            }));
            elems.push(Elem::End);
        }
        alts.push(starts);
    }
    Ok(Grammar {
        elems,
        alts,
        names: p.names,
        root: root_id,
        classes: p.classes,
        tokens: p.tokens,
    })
}

/// Reject left recursion (`a ::= a "x" | ...`, also through rules that can match the empty
/// string): expanding it would push stacks forever. llama.cpp rejects these too, though it only
/// treats rules with a directly empty alternative as nullable; here nullability is transitive,
/// and a cycle is only an error when some step of it leaves work behind on the stack (a rule
/// reference followed by more elements). A cycle of tail references (`( [x]* )*`, which llama.cpp
/// accepts) re-creates the same stack, and hash-consing ends its expansion.
///
/// Linear in the grammar's size: nullability by a worklist, cycles as strongly connected
/// components of the "can start with" graph (an edge `i -> j` lies on a cycle exactly when `i`
/// and `j` share a component).
fn check_left_recursion(
    rules: &[Vec<Vec<Sym>>],
    names: &[String],
    defined_at: &[Option<usize>],
    src: &str,
    clock: &mut Clock,
) -> Result<(), GrammarError> {
    let n = rules.len();
    let timeout = || Err(GrammarError::at(src, src.len(), TIME_BUDGET_MSG));
    // Nullable rules: an alternative is nullable once every symbol in it is a reference to a
    // nullable rule. `missing[k]` counts the symbols of alternative k not yet known nullable.
    let mut alt_rule: Vec<u32> = Vec::new();
    let mut missing: Vec<usize> = Vec::new();
    let mut users: Vec<Vec<u32>> = vec![Vec::new(); n]; // rule -> alternatives referencing it
    let mut nullable = vec![false; n];
    let mut todo: Vec<usize> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for a in r {
            let k = missing.len() as u32;
            alt_rule.push(i as u32);
            if a.iter().any(|s| !matches!(s, Sym::Ref(_))) {
                missing.push(usize::MAX); // a terminal: never nullable
                continue;
            }
            missing.push(a.len());
            for s in a {
                if let Sym::Ref(j) = *s {
                    users[j as usize].push(k);
                }
            }
            if a.is_empty() && !nullable[i] {
                nullable[i] = true;
                todo.push(i);
            }
        }
    }
    while let Some(j) = todo.pop() {
        if clock.expired() {
            return timeout();
        }
        for &k in &users[j] {
            let m = &mut missing[k as usize];
            *m -= 1;
            let i = alt_rule[k as usize] as usize;
            if *m == 0 && !nullable[i] {
                nullable[i] = true;
                todo.push(i);
            }
        }
    }
    // Left edges i -> j (j can start i), marked `tail` when the reference ends its alternative.
    let mut left: Vec<Vec<(u32, bool)>> = vec![Vec::new(); n];
    for (i, r) in rules.iter().enumerate() {
        for a in r {
            for (k, s) in a.iter().enumerate() {
                match *s {
                    Sym::Ref(j) => {
                        left[i].push((j, k + 1 == a.len()));
                        if !nullable[j as usize] {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    let Some(comp) = components(&left, clock) else {
        return timeout();
    };
    for i in 0..n {
        for &(j, tail) in &left[i] {
            if !tail && comp[j as usize] == comp[i] {
                let at = defined_at[i].unwrap_or(0);
                return Err(GrammarError::at(
                    src,
                    at,
                    format!(
                        "left recursion in rule '{}' (not supported, as in llama.cpp)",
                        names[i]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Strongly connected components of a graph (Tarjan's algorithm, with an explicit stack so
/// that long chains of rules cannot overflow the thread's stack): a component id per node.
/// None when the clock runs out.
fn components(adj: &[Vec<(u32, bool)>], clock: &mut Clock) -> Option<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = adj.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut comp = vec![UNSEEN; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut calls: Vec<(usize, usize)> = Vec::new(); // (node, next edge to follow)
    let mut next = 0u32;
    let mut n_comp = 0u32;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(top) = calls.last_mut() {
            if clock.expired() {
                return None;
            }
            let v = top.0;
            if let Some(&(w, _)) = adj[v].get(top.1) {
                top.1 += 1;
                let w = w as usize;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp[w] = n_comp;
                    if w == v {
                        break;
                    }
                }
                n_comp += 1;
            }
        }
    }
    Some(comp)
}
