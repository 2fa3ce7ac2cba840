//! GgufWriter -> GgufFile::open round trips: every metadata value type (nested arrays too),
//! tensors of several dtypes and ranks, alignment, and llama.cpp-style splits.

use cria_core::gguf::{Array, GgufFile, GgufWriter, Value};
use cria_core::{quant, DType, Error};
use std::path::PathBuf;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cria-core-gguf-writer-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn all_values() -> Vec<(String, Value)> {
    let v: Vec<(&str, Value)> = vec![
        ("general.architecture", "llama".into()),
        ("t.u8", 250u8.into()),
        ("t.i8", (-7i8).into()),
        ("t.u16", 65535u16.into()),
        ("t.i16", (-32768i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", (-0.0f32).into()),
        ("t.f32_inf", f32::INFINITY.into()),
        ("t.bool_t", true.into()),
        ("t.bool_f", false.into()),
        ("t.str", "héllo\nwörld ✓".into()),
        ("t.str_empty", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::PI.into()),
        ("a.u8", vec![0u8, 1, 255].into()),
        ("a.i8", vec![-128i8, 127].into()),
        ("a.u16", vec![1u16, 2].into()),
        ("a.i16", vec![-1i16].into()),
        ("a.u32", vec![7u32; 5].into()),
        ("a.i32", vec![1i32, -1, 3].into()),
        ("a.f32", vec![1.5f32, -2.25, 1e-30].into()),
        ("a.bool", vec![true, false, true].into()),
        (
            "a.str",
            vec!["a".to_string(), String::new(), "ccc".into()].into(),
        ),
        ("a.u64", vec![u64::MAX, 0].into()),
        ("a.i64", vec![i64::MIN, 5].into()),
        ("a.f64", vec![0.1f64, -0.2].into()),
        ("a.empty_u32", Vec::<u32>::new().into()),
        ("a.empty_str", Vec::<String>::new().into()),
        (
            "a.nested",
            vec![
                Array::U32(vec![1, 2]),
                Array::String(vec!["x"].into()),
                Array::Array(vec![Array::F32(vec![3.0]), Array::Array(vec![])]),
                Array::Bool(vec![]),
            ]
            .into(),
        ),
        ("a.empty_nested", Vec::<Array>::new().into()),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

struct T {
    name: &'static str,
    dtype: DType,
    ne: Vec<usize>,
    data: Vec<u8>,
}

fn some_tensors() -> Vec<T> {
    let f = |n: usize, seed: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
    };
    let q = |dt: DType, x: &[f32]| {
        let mut b = vec![0u8; dt.bytes_for(x.len()).unwrap()];
        quant::quantize(dt, x, &mut b).unwrap();
        b
    };
    vec![
        T {
            name: "token_embd.weight",
            dtype: DType::Q8_0,
            ne: vec![64, 3],
            data: q(DType::Q8_0, &f(192, 0.0)),
        },
        T {
            name: "norm",
            dtype: DType::F32,
            ne: vec![5],
            data: q(DType::F32, &f(5, 1.0)),
        }, // 20 bytes: needs padding
        T {
            name: "h",
            dtype: DType::F16,
            ne: vec![3, 1, 1, 2],
            data: q(DType::F16, &f(6, 2.0)),
        },
        T {
            name: "blk.0.attn_q.weight",
            dtype: DType::Q4_K,
            ne: vec![256, 2],
            data: q(DType::Q4_K, &f(512, 3.0)),
        },
        T {
            name: "blk.0.ffn_up.weight",
            dtype: DType::Q4_1,
            ne: vec![32, 2, 3],
            data: q(DType::Q4_1, &f(192, 4.0)),
        },
        T {
            name: "empty",
            dtype: DType::F32,
            ne: vec![4, 0],
            data: vec![],
        },
        T {
            name: "x.bf16",
            dtype: DType::BF16,
            ne: vec![7],
            data: q(DType::BF16, &f(7, 5.0)),
        },
    ]
}

fn writer<'a>(meta: &[(String, Value)], tensors: &'a [T]) -> GgufWriter<'a> {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add(k.clone(), v.clone());
    }
    for t in tensors {
        w.add_tensor(t.name, t.dtype, t.ne.clone(), &t.data[..])
            .unwrap();
    }
    w
}

fn assert_tensors(g: &GgufFile, tensors: &[T], alignment: usize) {
    assert_eq!(g.tensors.len(), tensors.len());
    for (t, want) in g.tensors.iter().zip(tensors) {
        assert_eq!(
            (t.name.as_str(), t.dtype, &t.ne),
            (want.name, want.dtype, &want.ne)
        );
        assert_eq!(t.bytes(), &want.data[..], "{}", want.name);
        assert_eq!(g.tensor(want.name).unwrap().name, want.name);
        if let cria_core::Bytes::Mapped { offset, .. } = &t.data {
            assert_eq!(
                offset % alignment,
                0,
                "{} at {offset} not {alignment}-aligned",
                want.name
            );
        }
    }
}

#[test]
fn every_value_type_and_tensor_round_trips() {
    let dir = tmp_dir("rt");
    let meta = all_values();
    let tensors = some_tensors();
    for alignment in [None, Some(1), Some(64), Some(4096)] {
        let mut w = writer(&meta, &tensors);
        let mut want_meta = meta.clone();
        if let Some(a) = alignment {
            w.set_alignment(a).unwrap();
            want_meta.push(("general.alignment".into(), Value::U32(a as u32)));
        }
        let p = dir.join(format!("m{alignment:?}.gguf"));
        w.write(&p).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata, want_meta);
        assert_tensors(&g, &tensors, alignment.unwrap_or(32));
        assert_eq!(g.get_str("t.str"), Some("héllo\nwörld ✓"));
        assert_eq!(g.get_u64("t.u64"), Some(u64::MAX));
        assert_eq!(g.get_bool("t.bool_t"), Some(true));
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.files, vec![p.clone()]);
        assert!(!dir.join(format!("m{alignment:?}.gguf.partial")).exists());
        // Writing what was read gives the same bytes back.
        let p2 = dir.join("again.gguf");
        GgufWriter::from_gguf(&g).write(&p2).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    assert!(w
        .add_tensor("a", DType::F32, vec![4], vec![0u8; 15])
        .is_err()); // wrong size
    assert!(w
        .add_tensor("a", DType::Q4_0, vec![16], vec![0u8; 9])
        .is_err()); // partial block
    assert!(w.add_tensor("a", DType::F32, vec![], vec![0u8; 4]).is_err());
    assert!(w
        .add_tensor("a", DType::F32, vec![1, 1, 1, 1, 1], vec![0u8; 4])
        .is_err());
    assert!(w
        .add_tensor("a", DType::F32, vec![usize::MAX, 2], vec![])
        .is_err());
    w.add_tensor("a", DType::F32, vec![1], vec![0u8; 4])
        .unwrap();
    assert!(w
        .add_tensor("a", DType::F32, vec![1], vec![0u8; 4])
        .is_err()); // duplicate
    assert!(w.set_alignment(0).is_err());
    assert!(w.set_alignment(3).is_err());
    // A key set twice keeps its first position and its last value.
    w.add("k1", 1u32).add("k2", 2u32).add("k1", 3u32);
    assert_eq!(
        w.metadata(),
        &[
            ("k1".to_string(), Value::U32(3)),
            ("k2".to_string(), Value::U32(2))
        ]
    );
    w.remove("k1");
    assert_eq!(w.metadata(), &[("k2".to_string(), Value::U32(2))]);
    // Nesting the reader would refuse is refused on write.
    let mut deep = Array::U8(vec![]);
    for _ in 0..10 {
        deep = Array::Array(vec![deep]);
    }
    w.add("deep", deep);
    let dir = tmp_dir("bad");
    assert!(w.write(dir.join("x.gguf")).is_err());
    assert!(!dir.join("x.gguf").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn splits_open_as_one_model() {
    let dir = tmp_dir("split");
    let meta = all_values();
    let tensors = some_tensors();
    let w = writer(&meta, &tensors);
    let paths = w.write_split(dir.join("model"), 3).unwrap();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00003.gguf",
            "model-00002-of-00003.gguf",
            "model-00003-of-00003.gguf"
        ]
    );
    let mut want_meta = meta.clone();
    want_meta.push(("split.no".into(), Value::U16(0)));
    want_meta.push(("split.count".into(), Value::U16(3)));
    want_meta.push((
        "split.tensors.count".into(),
        Value::I32(tensors.len() as i32),
    ));
    // Whichever split is named, the whole model comes back, with the first split's metadata.
    for p in &paths {
        let g = GgufFile::open(p).unwrap();
        assert_eq!(g.metadata, want_meta, "{}", p.display());
        assert_tensors(&g, &tensors, 32);
        assert_eq!(g.files, paths);
    }
    // Each split alone holds a share of the tensors and the split keys.
    let mut per_file = 0;
    for (i, p) in paths.iter().enumerate() {
        let bytes = std::fs::read(p).unwrap();
        let n_tensors = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        assert!(n_tensors >= 2, "split {i} holds {n_tensors} tensors");
        per_file += n_tensors;
    }
    assert_eq!(per_file as usize, tensors.len());
    // A model with a non-default alignment keeps it in every split.
    let mut w = writer(&meta, &tensors);
    w.set_alignment(128).unwrap();
    let p128 = w.write_split(dir.join("a128"), 2).unwrap();
    assert_tensors(&GgufFile::open(&p128[1]).unwrap(), &tensors, 128);
    // Re-splitting an opened split model.
    let g = GgufFile::open(&paths[0]).unwrap();
    let again = GgufWriter::from_gguf(&g)
        .write_split(dir.join("re"), 7)
        .unwrap();
    let g7 = GgufFile::open(&again[3]).unwrap();
    assert_tensors(&g7, &tensors, 32);
    assert_eq!(g7.get_u64("split.count"), Some(7));
    // And merging back into one file.
    GgufWriter::from_gguf(&g7)
        .write(dir.join("merged.gguf"))
        .unwrap();
    let merged = GgufFile::open(dir.join("merged.gguf")).unwrap();
    assert_eq!(merged.metadata, meta);
    assert_tensors(&merged, &tensors, 32);
    // More splits than tensors, or none, is refused.
    assert!(writer(&meta, &tensors)
        .write_split(dir.join("x"), tensors.len() + 1)
        .is_err());
    assert!(writer(&meta, &tensors)
        .write_split(dir.join("x"), 0)
        .is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broken_splits_are_clear_errors() {
    let dir = tmp_dir("broken");
    let tensors = some_tensors();
    let paths = writer(&all_values(), &tensors)
        .write_split(dir.join("m"), 3)
        .unwrap();
    // A missing split.
    std::fs::rename(&paths[2], dir.join("elsewhere")).unwrap();
    let e = GgufFile::open(&paths[0])
        .err()
        .expect("missing split accepted")
        .to_string();
    assert!(e.contains("split 3 of 3 is missing"), "{e}");
    std::fs::rename(dir.join("elsewhere"), &paths[2]).unwrap();
    GgufFile::open(&paths[0]).unwrap();
    // A split renamed so the file name and split.count disagree.
    let odd = dir.join("m-00001-of-00004.gguf");
    std::fs::copy(&paths[0], &odd).unwrap();
    let e = GgufFile::open(&odd).err().unwrap().to_string();
    assert!(e.contains("split.count = 3") && e.contains("says 4"), "{e}");
    let plain = dir.join("plain.gguf");
    std::fs::copy(&paths[0], &plain).unwrap();
    let e = GgufFile::open(&plain).err().unwrap().to_string();
    assert!(e.contains("not PREFIX-0000i-of-0000N.gguf"), "{e}");
    // Splits of two different models mixed: split.no / tensors count / duplicate names are checked.
    let other = writer(&all_values(), &tensors)
        .write_split(dir.join("o"), 3)
        .unwrap();
    std::fs::copy(&other[0], &paths[1]).unwrap(); // split 2 is now another model's split 1
    let e = GgufFile::open(&paths[0]).err().unwrap().to_string();
    assert!(e.contains("split.no = 0"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn split_tensor_count_is_checked() {
    let dir = tmp_dir("count");
    let tensors = some_tensors();
    let w = writer(&all_values(), &tensors);
    let paths = w.write_split(dir.join("m"), 2).unwrap();
    // Rewrite split 2 with one tensor less (split keys copied by hand).
    let g2 = GgufFile::open(&paths[0]).unwrap();
    let keep: Vec<&cria_core::Tensor> = g2.tensors.iter().skip(tensors.len() / 2).skip(1).collect();
    let mut w2 = GgufWriter::new();
    w2.add("split.no", 1u16)
        .add("split.count", 2u16)
        .add("split.tensors.count", tensors.len() as i32);
    for t in &keep {
        w2.add_tensor_ref(t).unwrap();
    }
    let tmp = dir.join("tmp.gguf");
    w2.write(&tmp).unwrap();
    drop(g2);
    std::fs::rename(&tmp, &paths[1]).unwrap();
    let e = GgufFile::open(&paths[0]).err().unwrap();
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert!(e.to_string().contains("split.tensors.count"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn removed_metadata_and_released_pages_leave_the_rest_intact() {
    let dir = tmp_dir("release");
    let meta = all_values();
    let tensors = some_tensors();
    for alignment in [None, Some(4096)] {
        let mut w = writer(&meta, &tensors);
        if let Some(a) = alignment {
            w.set_alignment(a).unwrap();
        }
        let p = dir.join(format!("m{alignment:?}.gguf"));
        w.write(&p).unwrap();
        let mut g = GgufFile::open(&p).unwrap();
        // Removing keys keeps every other key's lookup right (the index shifts).
        assert_eq!(g.remove_metadata("t.str"), Some("héllo\nwörld ✓".into()));
        assert_eq!(g.remove_metadata("t.str"), None);
        assert_eq!(
            g.remove_metadata("general.architecture"),
            Some("llama".into())
        );
        assert_eq!(g.remove_metadata("no.such.key"), None);
        assert_eq!(g.get_str("t.str"), None);
        assert_eq!(g.architecture(), None);
        assert_eq!(g.get_u64("t.u64"), Some(u64::MAX));
        assert_eq!(g.get_bool("t.bool_t"), Some(true));
        for (k, v) in &g.metadata {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        assert_eq!(
            g.metadata.len(),
            meta.len() - 2 + alignment.is_some() as usize
        );
        // Released pages read back from the file: whatever is kept, every byte is unchanged.
        let all: Vec<&cria_core::Tensor> = g.tensors.iter().collect();
        for keep in [&all[..0], &all[..1], &all[2..4], &all[..]] {
            g.release_pages_except(keep);
            assert_tensors(&g, &tensors, alignment.unwrap_or(32));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The streaming writer: what it writes equals the in-memory writer's bytes; a wrong-sized tensor,
/// too many or too few tensors, or dropping it unfinished leave neither PATH nor PATH.partial.
#[test]
fn stream_writer_writes_the_same_bytes_and_leaves_nothing_on_failure() {
    use cria_core::gguf::{GgufStreamWriter, TensorInfo};
    let dir = tmp_dir("stream");
    let a: Vec<u8> = (0..4 * 33).map(|i| i as u8).collect();
    let b: Vec<u8> = (0..2 * 64).map(|i| (i * 7) as u8).collect();
    let infos = vec![
        TensorInfo {
            name: "a".into(),
            dtype: DType::F32,
            ne: vec![33],
        },
        TensorInfo {
            name: "b".into(),
            dtype: DType::F16,
            ne: vec![16, 4],
        },
    ];
    let arch = Value::from("llama");
    let meta = [("general.architecture", &arch)];
    for alignment in [32usize, 256] {
        let mut w = GgufWriter::new();
        w.add("general.architecture", "llama");
        if alignment != 32 {
            w.set_alignment(alignment).unwrap();
        }
        w.add_tensor("a", DType::F32, vec![33], a.clone()).unwrap();
        w.add_tensor("b", DType::F16, vec![16, 4], b.clone())
            .unwrap();
        let whole = dir.join(format!("whole-{alignment}.gguf"));
        w.write(&whole).unwrap();
        let al = Value::U32(alignment as u32);
        let mut m: Vec<(&str, &Value)> = meta.to_vec();
        if alignment != 32 {
            m.push(("general.alignment", &al));
        }
        let streamed = dir.join(format!("streamed-{alignment}.gguf"));
        let mut s = GgufStreamWriter::create(&streamed, &m, &infos, alignment).unwrap();
        assert_eq!(s.next_tensor(), 0);
        s.write_tensor(&a).unwrap();
        s.write_tensor(&b).unwrap();
        s.finish().unwrap();
        assert_eq!(
            std::fs::read(&whole).unwrap(),
            std::fs::read(&streamed).unwrap()
        );
    }
    let partial = |p: &std::path::Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".partial");
        PathBuf::from(s)
    };
    let out = dir.join("fail.gguf");
    // Wrong size.
    let mut s = GgufStreamWriter::create(&out, &meta, &infos, 32).unwrap();
    assert!(partial(&out).exists());
    assert!(s.write_tensor(&a[1..]).is_err());
    assert!(s.write_tensor(&a).is_err(), "a failed writer stays failed");
    assert!(!out.exists() && !partial(&out).exists());
    // Too few tensors.
    let mut s = GgufStreamWriter::create(&out, &meta, &infos, 32).unwrap();
    s.write_tensor(&a).unwrap();
    assert!(s.finish().is_err());
    assert!(!out.exists() && !partial(&out).exists());
    // Too many tensors.
    let mut s = GgufStreamWriter::create(&out, &meta, &infos[..1], 32).unwrap();
    s.write_tensor(&a).unwrap();
    assert!(s.write_tensor(&b).is_err());
    assert!(!out.exists() && !partial(&out).exists());
    // Dropped unfinished (an error or a panic elsewhere).
    let mut s = GgufStreamWriter::create(&out, &meta, &infos, 32).unwrap();
    s.write_tensor(&a).unwrap();
    drop(s);
    assert!(!out.exists() && !partial(&out).exists());
    // Bad headers are refused before any file is made.
    let dup = vec![infos[0].clone(), infos[0].clone()];
    assert!(GgufStreamWriter::create(&out, &meta, &dup, 32).is_err());
    let odd = vec![TensorInfo {
        name: "q".into(),
        dtype: DType::Q4_0,
        ne: vec![33],
    }];
    assert!(GgufStreamWriter::create(&out, &meta, &odd, 32).is_err());
    assert!(GgufStreamWriter::create(&out, &meta, &infos, 48).is_err());
    assert!(!out.exists() && !partial(&out).exists());
    std::fs::remove_dir_all(&dir).ok();
}
