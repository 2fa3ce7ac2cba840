//! The packed string array GGUF string arrays are read into: same strings, same order, empty
//! strings kept, out-of-range lookups are None (or a panic naming the index for `[]`).

use cria_core::gguf::StrArray;

#[test]
fn packed_strings_read_back_in_order() {
    let src = ["<s>", "", "Ġthe", "", "日本", "a b"];
    let a: StrArray = src.iter().collect();
    assert_eq!(a.len(), src.len());
    assert!(!a.is_empty());
    assert_eq!(a.iter().collect::<Vec<_>>(), src);
    for (i, s) in src.iter().enumerate() {
        assert_eq!(&a[i], *s);
        assert_eq!(a.get(i), Some(*s));
    }
    assert_eq!(a.get(src.len()), None);
    let e = StrArray::default();
    assert!(e.is_empty() && e.get(0).is_none() && e.iter().next().is_none());
    assert_eq!(
        StrArray::from(vec![String::from("x")]),
        ["x"].iter().collect()
    );
}

#[test]
#[should_panic(expected = "string 3 of an array of 1")]
fn indexing_past_the_end_names_the_index() {
    let a: StrArray = ["only"].iter().collect();
    let _ = &a[3];
}
