#!/usr/bin/env python3
"""Writes small GGUF files with gguf-py's GGUFWriter (an independent implementation of the
format; `pip install gguf`, tested with 0.19.0) for crates/cria-core/tests/gguf_compat.rs:

  fixtures/gguf_py/all_types.gguf           every metadata value type, nested arrays, tensors
                                            of several dtypes and ranks
  fixtures/gguf_py/split-0000i-of-00003.gguf the same model split with split_max_tensors=3
  fixtures/gguf_py/expected.json            what gguf-py's GGUFReader reads back from
                                            all_types.gguf: metadata (key, type path, value) in
                                            order, tensors (name, ggml type, ne, bytes as hex)

The Rust test checks that GgufFile reads the same, and that GgufWriter, fed what was read,
reproduces both files byte for byte. Deterministic; run:
  python3 crates/cria-core/tests/gen_gguf_fixtures.py
"""

import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

OUT = Path(__file__).resolve().parent / "fixtures" / "gguf_py"


def build(w):
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 0.1)
    w.add_array("a.str", ["a", "", "ccc"])
    w.add_key_value("a.f32", [1.5, -2.25, 1e-30], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("a.u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("a.i64", [-(2**63), 5], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("a.bool", [True, False], V.ARRAY, sub_type=V.BOOL)
    w.add_array("a.nested", [[1, 2], [3]])
    rng = np.random.default_rng(5)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 8)).astype(np.float32))
    w.add_tensor("norm", rng.standard_normal(5).astype(np.float32))
    w.add_tensor("h16", rng.standard_normal((2, 1, 3)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=T.Q8_0)
    q4 = gguf.quants.quantize(rng.standard_normal((4, 32)).astype(np.float32), T.Q4_0)
    w.add_tensor("q4", q4, raw_dtype=T.Q4_0)
    w.add_tensor("four_d", rng.standard_normal((2, 1, 2, 3)).astype(np.float32))
    w.add_tensor("i32", np.arange(6, dtype=np.int32))


def write(path, **kw):
    w = gguf.GGUFWriter(str(path), "llama", **kw)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_value(f):
    """A field as (type path, value) with gguf-py's own decoding."""
    types = [int(t) for t in f.types]
    if f.types[0] == V.ARRAY:
        if len(f.types) > 1 and f.types[1] == V.ARRAY:
            # nested: gguf-py's reader only exposes the leaves (f.data indexes them), flattened
            vals = [f.parts[i].tolist()[0] for i in f.data]
            return types, vals
        vals = [f.parts[i].tobytes().decode() if f.types[1] == V.STRING else f.parts[i].tolist()[0] for i in f.data]
        return types, vals
    if f.types[0] == V.STRING:
        return types, f.parts[-1].tobytes().decode()
    return types, f.parts[-1].tolist()[0]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.glob("*.gguf"):
        p.unlink()
    write(OUT / "all_types.gguf")
    write(OUT / "split.gguf", split_max_tensors=3)
    r = gguf.GGUFReader(str(OUT / "all_types.gguf"))
    meta = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        types, val = field_value(f)
        meta.append({"key": f.name, "types": types, "value": val})
    tensors = [{"name": t.name, "type": int(t.tensor_type), "ne": [int(x) for x in t.shape],
                "hex": t.data.tobytes().hex()} for t in r.tensors]
    (OUT / "expected.json").write_text(json.dumps({"metadata": meta, "tensors": tensors}, indent=1, ensure_ascii=False) + "\n")
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
