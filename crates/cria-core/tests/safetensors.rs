//! safetensors: files written by the reference implementation (gen_safetensors_fixtures.py),
//! cria's own writer, sharded folders and hostile headers.

use cria_core::safetensors::{write_safetensors, SafetensorsModel};
use cria_core::{DType, Error};
use serde_json::Value as J;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-core-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn expected() -> serde_json::Map<String, J> {
    let j: J =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    j.as_object().unwrap().clone()
}

/// Checks every tensor of `m` named in `want` against the reference values.
fn check_against_reference(m: &SafetensorsModel, want: &serde_json::Map<String, J>) -> usize {
    let mut n = 0;
    for (name, w) in want {
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let dt = w["dtype"].as_str().unwrap();
        let Some(t) = m.tensors.iter().find(|t| t.name == *name) else {
            if m.skipped.iter().any(|(n, d)| n == name && d == dt) {
                let e = m.get(name).unwrap_err();
                assert!(
                    matches!(e, Error::Unsupported(_)) && e.to_string().contains(dt),
                    "{e}"
                );
            }
            continue;
        };
        assert_eq!(t.dtype, DType::from_name(dt).unwrap(), "{name}");
        // GGML order is the PyTorch shape reversed; a 0-d scalar is [1].
        let mut ne: Vec<usize> = shape.iter().rev().copied().collect();
        if ne.is_empty() {
            ne.push(1);
        }
        assert_eq!(t.ne, ne, "{name}");
        // Every value is an f32 (or narrower) widened to f64; serde_json's parse can be off in the
        // last f64 bit, which rounding back to f32 removes.
        let vals: Vec<u32> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v.as_f64().unwrap() as f32).to_bits())
            .collect();
        let got: Vec<u32> = t
            .to_f32_vec()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert_eq!(got, vals, "{name}");
        n += 1;
    }
    n
}

#[test]
fn reads_reference_files() {
    let want = expected();
    let single = SafetensorsModel::open_folder(&fixtures().join("single")).unwrap();
    assert_eq!(check_against_reference(&single, &want), 5);
    assert_eq!(
        single.skipped,
        vec![("position_ids".to_string(), "I64".to_string())]
    );
    let file = SafetensorsModel::open_file(&fixtures().join("single/model.safetensors")).unwrap();
    assert_eq!(file.tensors.len(), 5);
    let q = file.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!((q.rows(), q.cols()), (3, 4));

    let sharded = SafetensorsModel::open_folder(&fixtures().join("sharded")).unwrap();
    assert_eq!(check_against_reference(&sharded, &want), 3);
    assert_eq!(sharded.files.len(), 2);
    assert!(matches!(sharded.get("nope"), Err(Error::Msg(_))));
}

#[test]
fn writer_round_trips_and_matches_the_reference_reading() {
    let dir = tmp_dir("rt");
    let reference = SafetensorsModel::open_folder(&fixtures().join("single")).unwrap();
    // Rewrite every loaded tensor with cria's writer (PyTorch shapes = ne reversed) and reread.
    let shapes: Vec<Vec<usize>> = reference
        .tensors
        .iter()
        .map(|t| {
            if t.ne == [1] {
                vec![]
            } else {
                t.ne.iter().rev().copied().collect()
            }
        })
        .collect();
    let list: Vec<(&str, DType, &[usize], &[u8])> = reference
        .tensors
        .iter()
        .zip(&shapes)
        .map(|(t, s)| (t.name.as_str(), t.dtype, s.as_slice(), t.bytes()))
        .collect();
    let p = dir.join("model.safetensors");
    write_safetensors(&p, &list).unwrap();
    let again = SafetensorsModel::open_folder(&dir).unwrap();
    assert_eq!(check_against_reference(&again, &expected()), 5);
    // The header is padded to 8 bytes.
    let b = std::fs::read(&p).unwrap();
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()) % 8, 0);
    // Refusals.
    let f = [0u8; 8];
    assert!(write_safetensors(&dir.join("x"), &[("a", DType::F32, &[3], &f)]).is_err());
    assert!(write_safetensors(
        &dir.join("x"),
        &[("a", DType::F32, &[2], &f), ("a", DType::F32, &[2], &f)]
    )
    .is_err());
    assert!(matches!(
        write_safetensors(&dir.join("x"), &[("a", DType::Q8_0, &[1], &f)]),
        Err(Error::Unsupported(_))
    ));
    assert!(write_safetensors(&dir.join("x"), &[("a", DType::F32, &[usize::MAX, 2], &f)]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sharded_folder_problems_are_clear_errors() {
    let base = fixtures().join("sharded");
    let index_text = std::fs::read_to_string(base.join("model.safetensors.index.json")).unwrap();
    let case = |name: &str, index: Option<&str>, prep: &dyn Fn(&Path)| -> String {
        let d = tmp_dir(name);
        copy_dir(&base, &d);
        if let Some(i) = index {
            std::fs::write(d.join("model.safetensors.index.json"), i).unwrap();
        }
        prep(&d);
        let r = SafetensorsModel::open_folder(&d)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"))
            .to_string();
        std::fs::remove_dir_all(&d).ok();
        r
    };
    let e = case("missing", None, &|d| {
        std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap()
    });
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    let e = case(
        "ghost",
        Some(&index_text.replace("\"lm_head.weight\"", "\"ghost.weight\"")),
        &|_| {},
    );
    assert!(
        e.contains("ghost.weight") && e.contains("no shard holds it"),
        "{e}"
    );
    let moved = index_text.replace(
        "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"",
        "\"lm_head.weight\": \"model-00001-of-00002.safetensors\"",
    );
    assert_ne!(moved, index_text);
    let e = case("moved", Some(&moved), &|_| {});
    assert!(
        e.contains("lm_head.weight") && e.contains("but it is in"),
        "{e}"
    );
    let e = case(
        "escape",
        Some(&index_text.replace(
            "\"model-00002-of-00002.safetensors\"",
            "\"../model-00002-of-00002.safetensors\"",
        )),
        &|_| {},
    );
    assert!(e.contains("outside the folder"), "{e}");
    let e = case("json", Some("{\"weight_map\": ["), &|_| {});
    assert!(e.contains("index.json"), "{e}");
    let e = case("nomap", Some("{}"), &|_| {});
    assert!(e.contains("weight_map"), "{e}");
    // Two shards holding one tensor.
    let e = case(
        "dup",
        Some("{\"weight_map\": {\"a\": \"x.safetensors\", \"b\": \"y.safetensors\"}}"),
        &|d| {
            write_safetensors(
                &d.join("x.safetensors"),
                &[("a", DType::F32, &[1], &[0; 4])],
            )
            .unwrap();
            write_safetensors(
                &d.join("y.safetensors"),
                &[
                    ("a", DType::F32, &[1], &[0; 4]),
                    ("b", DType::F32, &[1], &[0; 4]),
                ],
            )
            .unwrap();
        },
    );
    assert!(e.contains("more than one shard"), "{e}");
    // No weights at all.
    let d = tmp_dir("none");
    let e = SafetensorsModel::open_folder(&d).err().unwrap().to_string();
    assert!(e.contains("no *.safetensors"), "{e}");
    // Without an index or model.safetensors, every *.safetensors in the folder is loaded.
    copy_dir(&base, &d);
    std::fs::remove_file(d.join("model.safetensors.index.json")).unwrap();
    let m = SafetensorsModel::open_folder(&d).unwrap();
    assert_eq!((m.files.len(), m.tensors.len(), m.skipped.len()), (2, 3, 1));
    std::fs::remove_dir_all(&d).ok();
}

fn raw_file(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

fn open_raw(name: &str, bytes: &[u8]) -> Result<SafetensorsModel, Error> {
    let d = tmp_dir(name);
    let p = d.join("x.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let r = SafetensorsModel::open_file(&p);
    std::fs::remove_dir_all(&d).ok();
    r
}

#[test]
fn hostile_headers() {
    let e = open_raw("utf8", &raw_file(b"{\"w\xff\":{}}", &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("UTF-8"), "{e}");
    // A header claimed bigger than 100 MB in a (sparse) file that is bigger still.
    let d = tmp_dir("huge");
    let p = d.join("huge.safetensors");
    std::fs::write(&p, (120u64 << 20).to_le_bytes()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(160 << 20)
        .unwrap();
    let e = SafetensorsModel::open_file(&p).err().unwrap().to_string();
    assert!(e.contains("100 MB"), "{e}");
    std::fs::remove_dir_all(&d).ok();
    // Each of these is refused with a message naming the problem.
    let d24 = [0u8; 24];
    for (h, data, want) in [
        (&br#"{"w":{"dtype":"F32","shape":[2,3]}}"#[..], &d24[..], "data_offsets"),
        (br#"{"w":{"dtype":"F32","data_offsets":[0,24]}}"#, &d24, "shape"),
        (br#"{"w":{"shape":[6],"data_offsets":[0,24]}}"#, &d24, "dtype"),
        (br#"{"w":{"dtype":"F32","shape":[-6],"data_offsets":[0,24]}}"#, &d24, "shape"),
        (br#"{"w":{"dtype":"F32","shape":[6],"data_offsets":[0,24,48]}}"#, &d24, "data_offsets"),
        (br#"{"w":{"dtype":"F32","shape":[6],"data_offsets":[0,1e3]}}"#, &d24, "data_offsets"),
        (br#"{"w":{"dtype":"F16","shape":[6],"data_offsets":[0,24]}}"#, &d24, "needs 12 bytes"),
        (br#"{"w":{"dtype":"F32","shape":[6],"data_offsets":[0,25]}}"#, &d24, "outside"),
        (br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#, &d24, "overlap"),
        (br#"{"w":{"dtype":"F32","shape":[1152921504606846976,16],"data_offsets":[0,24]}}"#, &d24, "overflow"),
        (br#"{"w":{"dtype":"Q4","shape":[6],"data_offsets":[0,24]}}"#, &d24, "unknown dtype"),
        (br#""just a string""#, &d24, "not a JSON object"),
        (br#"{"w":"#, &d24, "JSON"),
    ] {
        let e = open_raw("bad", &raw_file(h, data)).err().unwrap_or_else(|| panic!("{} accepted", String::from_utf8_lossy(h))).to_string();
        assert!(e.contains(want), "{}: {e} does not mention {want}", String::from_utf8_lossy(h));
    }
    // An unsupported but well-formed dtype (F8, I64) is skipped, not fatal.
    let m = open_raw("f8", &raw_file(br#"{"f8":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &[0u8; 8])).unwrap();
    assert_eq!((m.tensors.len(), m.skipped.len()), (1, 1));
    assert!(matches!(m.get("f8"), Err(Error::Unsupported(_))));
}
