//! Code point classes for the pre-tokenizers, and GPT-2's byte <-> printable-char mapping.
//!
//! The classes are the Unicode general-category groups (\p{L}, \p{N}, ...) from Unicode 15.1,
//! the version llama.cpp's table was generated from, so that a rare, newly assigned character
//! splits the same way here as there (`tests/unicode_table.rs` compares the two tables).

use crate::unicode_table::CLASS_RANGES;

/// Category-class bits of one code point. A code point has exactly one class bit; `WHITESPACE`
/// is added on top for the Unicode `White_Space` property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

// All class bits are listed (the table holds them) though the splitters test only some.
#[allow(dead_code)]
impl Flags {
    pub const UNDEFINED: u16 = 0x01;
    pub const NUMBER: u16 = 0x02;
    pub const LETTER: u16 = 0x04;
    pub const SEPARATOR: u16 = 0x08;
    pub const MARK: u16 = 0x10;
    pub const PUNCTUATION: u16 = 0x20;
    pub const SYMBOL: u16 = 0x40;
    pub const CONTROL: u16 = 0x80;
    pub const WHITESPACE: u16 = 0x100;

    /// Flags of "no character": what the splitters see past the end of a word. All tests
    /// are false and `is_none()` is true (llama.cpp's `as_uint() == 0`).
    pub const NONE: Flags = Flags(0);

    #[inline]
    pub fn of(c: char) -> Flags {
        let cp = c as u32;
        if cp < 128 {
            return Flags(ASCII[cp as usize]);
        }
        // The last range that starts at or before cp.
        let i = CLASS_RANGES.partition_point(|&(start, _)| start <= cp);
        let class = CLASS_RANGES[i.saturating_sub(1)].1 as u16;
        Flags(if is_white_space(cp) {
            class | Self::WHITESPACE
        } else {
            class
        })
    }
    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    /// A character (not "none") that is neither whitespace, letter nor number: the regexes'
    /// `[^\s\p{L}\p{N}]`.
    #[inline]
    pub fn is_other(self) -> bool {
        !self.is_none() && self.0 & (Self::WHITESPACE | Self::LETTER | Self::NUMBER) == 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
}

/// Unicode `White_Space` property (PropList.txt); stable since Unicode 6.
fn is_white_space(cp: u32) -> bool {
    matches!(cp, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

/// ASCII fast path, built from the same table at compile time.
static ASCII: [u16; 128] = {
    let mut t = [0u16; 128];
    let mut cp = 0;
    while cp < 128 {
        // Find the class of cp by a linear walk over the first ranges (all of ASCII is covered
        // by the first few dozen entries).
        let mut i = 0;
        while i + 1 < CLASS_RANGES.len() && CLASS_RANGES[i + 1].0 <= cp as u32 {
            i += 1;
        }
        let mut f = CLASS_RANGES[i].1 as u16;
        if matches!(cp, 0x09..=0x0D | 0x20) {
            f |= Flags::WHITESPACE;
        }
        t[cp] = f;
        cp += 1;
    }
    t
};

/// GPT-2's byte-level alphabet: every byte maps to a printable code point, so that BPE can run on
/// text without raw control bytes or spaces. Printable Latin-1 bytes map to themselves; the other
/// 68 bytes, in increasing order, to U+0100, U+0101, ... (OpenAI's `bytes_to_unicode`).
pub(crate) fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// Inverse of [`byte_to_char`]; `None` for a char outside the 256-char alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        let b = cp as u8;
        return if is_printable_latin1(b) {
            Some(b)
        } else {
            None
        };
    }
    if cp < 0x100 + 68 {
        return Some(NON_PRINTABLE[(cp - 0x100) as usize]);
    }
    None
}

const fn is_printable_latin1(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 bytes that are not printable Latin-1, in increasing order.
static NON_PRINTABLE: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !is_printable_latin1(b as u8) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

static BYTE_TO_CHAR: [char; 256] = {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        t[b] = if is_printable_latin1(b as u8) {
            match char::from_u32(b as u32) {
                Some(c) => c,
                None => '\0',
            }
        } else {
            let c = match char::from_u32(0x100 + n) {
                Some(c) => c,
                None => '\0',
            };
            n += 1;
            c
        };
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        // Known anchors of the GPT-2 table: space is 'Ġ' (U+0120), newline 'Ċ' (U+010A).
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte('\u{0144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn classes() {
        assert!(Flags::of('a').is_letter());
        assert!(Flags::of('é').is_letter());
        assert!(Flags::of('7').is_number());
        assert!(Flags::of('½').is_number());
        assert!(Flags::of(' ').is_whitespace());
        assert!(Flags::of('\u{3000}').is_whitespace());
        assert!(Flags::of('\u{85}').is_whitespace());
        assert!(Flags::of('!').is_punctuation());
        assert!(!Flags::of('$').is_punctuation());
        assert!(Flags::of('你').is_letter());
        assert!(!Flags::of('🦙').is_letter());
        assert!(!Flags::of('🦙').is_none());
        // Unassigned code points are UNDEFINED, not "none".
        assert!(!Flags::of('\u{0378}').is_none());
    }
}

/// Our generated table must equal the one llama.cpp was built with (its unicode-data.cpp in the
/// reference tree), range for range: a different Unicode version would split rare text differently.
#[cfg(test)]
mod reference_table {
    use crate::unicode_table::CLASS_RANGES;

    #[test]
    fn matches_llama_cpp_unicode_data() {
        let dir = std::env::var_os("CRIA_REF_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").into());
        let path = dir.join("llama.cpp/src/unicode-data.cpp");
        let src = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (set CRIA_REF_DIR)", path.display()));
        let body = src
            .split("unicode_ranges_flags = {")
            .nth(1)
            .and_then(|s| s.split("};").next())
            .expect("unicode_ranges_flags in unicode-data.cpp");
        let mut theirs = Vec::new();
        for entry in body.split('{').skip(1) {
            let mut it = entry.split(['}', ',']).map(str::trim);
            let start =
                u32::from_str_radix(it.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            let flags =
                u32::from_str_radix(it.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            theirs.push((start, flags));
        }
        // llama.cpp closes the list with a (0x110000, 0) sentinel.
        assert_eq!(theirs.pop(), Some((0x110000, 0)));
        let ours: Vec<(u32, u32)> = CLASS_RANGES.iter().map(|&(s, f)| (s, f as u32)).collect();
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours, theirs);
    }
}
