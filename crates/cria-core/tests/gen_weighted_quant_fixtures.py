#!/usr/bin/env python3
"""Generates tests/fixtures/quant_weighted.bin, the reference that tests/quantize_weighted.rs
holds `cria_core::quantize::quantize_rows` to, byte for byte.

Reference: llama.cpp's own `ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)`
from libggml-base.so (what llama-quantize calls per tensor chunk), through ctypes. Looked up in
$CRIA_REF_DIR/llama.cpp/build/bin (default: <repo>/ref); this script fails without it. That
library is built by CMake without -march flags (only ggml-cpu gets the native ones), so its
quantizers are strict IEEE f32 with no FMA contraction: `objdump -d libggml-base.so | grep -c
vfmadd` prints 0.

Inputs (f32 rows, fixed seeds, so rerunning reproduces the same file):
  * random rows of awkward kinds, each kind one row: gaussian, heavy-tailed (Student t, 2 dof),
    all zeros, one huge value, tiny values ~1e-30 (their squares underflow), negative only,
    positive only, per-32 scales spanning 1e-3..10 with a zero and a constant group, exact
    quarter steps; lengths 256 and 512 (every type) and 96 and 160 (the 32-block types only);
  * real rows of SmolLM2-135M (F16 GGUF $CRIA_REF_DIR/bench/smollm2-F16.gguf): blk.3.ffn_down
    (1536 columns, every type) and blk.0.attn_q (576 columns, the 32-block types).
Importance matrices per input: none; "rand" (log-normal, about 10% exact zeros); "holes" (rand with
whole 16- and 32-column groups zeroed, so some groups have all-zero weights); "zero" (all zero).

File layout (little-endian; strings are u32 length + utf-8):
  b"CRWQ", u32 version = 1
  u32 n_inputs;    each: name, u32 n_per_row, u32 nrows, f32[n_per_row * nrows]
  u32 n_imatrices; each: name, u32 input index, f32[n_per_row]
  u32 n_cases;     each: u32 input index, u32 imatrix index (0xFFFFFFFF: none), u32 ggml type id,
                   u32 n_bytes, bytes

Run: python3 crates/cria-core/tests/gen_weighted_quant_fixtures.py
"""

import ctypes
import os
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "quant_weighted.bin"
REF = Path(os.environ.get("CRIA_REF_DIR", HERE.parent.parent.parent / "ref"))

TYPES_32 = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL]
TYPES_256 = TYPES_32 + [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]
IGNORES_WEIGHTS = (T.F32, T.F16, T.BF16, T.Q8_0)
NONE = 0xFFFFFFFF


def s(name):
    b = name.encode()
    return struct.pack("<I", len(b)) + b


def awkward_rows(rng, n):
    rows = []
    rows.append(rng.standard_normal(n) * 0.02)
    rows.append(rng.standard_t(2, n) * 0.01)
    rows.append(np.zeros(n))
    r = rng.standard_normal(n) * 0.01
    r[rng.integers(0, n)] = 50.0
    rows.append(r)
    rows.append(rng.standard_normal(n) * 1e-30)
    rows.append(-np.abs(rng.standard_normal(n)) * 0.05)
    rows.append(np.abs(rng.standard_normal(n)) * 0.05)
    r = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-3, 1, n // 32), 32)
    r[0:32] = 0.0
    r[32:64] = 0.75
    rows.append(r)
    rows.append(rng.integers(-16, 16, n) * 0.25)
    return np.stack(rows).astype(np.float32)


def smol_rows(name, rows):
    r = GGUFReader(str(REF / "bench" / "smollm2-F16.gguf"))
    for t in r.tensors:
        if t.name == name:
            assert t.tensor_type == T.F16, t.tensor_type
            return np.ascontiguousarray(np.asarray(t.data)[rows]).astype(np.float32)
    raise KeyError(name)


def imatrices(rng, n):
    rand = np.exp(rng.standard_normal(n) * 1.5).astype(np.float32)
    rand[rng.random(n) < 0.1] = 0.0
    holes = rand.copy()
    holes[16:32] = 0.0
    holes[64:96] = 0.0
    if n >= 256:
        holes[256 - 16:256] = 0.0
    return [("rand", rand), ("holes", holes), ("zero", np.zeros(n, dtype=np.float32))]


def load_chunk():
    lib = REF / "llama.cpp" / "build" / "bin" / "libggml-base.so"
    try:
        base = ctypes.CDLL(str(lib))
    except OSError as e:
        sys.exit(f"cannot load {lib}: {e}")
    f = base.ggml_quantize_chunk
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_int64, ctypes.c_void_p]
    f.restype = ctypes.c_size_t
    return f


def quantize(chunk, qtype, x, imat):
    nrows, n = x.shape
    bs, ts = GGML_QUANT_SIZES[qtype]
    out = (ctypes.c_uint8 * (nrows * n // bs * ts))()
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = None if imat is None else np.ascontiguousarray(imat, dtype=np.float32)
    got = chunk(int(qtype), x.ctypes.data, ctypes.addressof(out), 0, nrows, n,
                None if w is None else w.ctypes.data)
    assert got == len(out), (qtype, got, len(out))
    return bytes(out)


def main():
    chunk = load_chunk()
    rng = np.random.default_rng(20261207)
    inputs = []
    for n in (256, 512, 96, 160):
        inputs.append((f"awkward-{n}", awkward_rows(rng, n)))
    inputs.append(("smollm2:blk.3.ffn_down", smol_rows("blk.3.ffn_down.weight", [0, 1, 100])))
    inputs.append(("smollm2:blk.0.attn_q", smol_rows("blk.0.attn_q.weight", [0, 7])))

    out = bytearray(b"CRWQ" + struct.pack("<I", 1))
    out += struct.pack("<I", len(inputs))
    for name, x in inputs:
        out += s(name) + struct.pack("<II", x.shape[1], x.shape[0]) + x.astype("<f4").tobytes()
    imats = []
    for i, (_, x) in enumerate(inputs):
        for name, w in imatrices(rng, x.shape[1]):
            imats.append((name, i, w))
    out += struct.pack("<I", len(imats))
    for name, i, w in imats:
        out += s(name) + struct.pack("<I", i) + w.astype("<f4").tobytes()

    cases = []
    for i, (name, x) in enumerate(inputs):
        types = TYPES_256 if x.shape[1] % 256 == 0 else TYPES_32
        variants = [(NONE, None)] + [(k, w) for k, (_, j, w) in enumerate(imats) if j == i]
        for qtype in types:
            # the types that ignore the weights get one weighted case, not three
            vs = variants[:2] if qtype in IGNORES_WEIGHTS else variants
            for k, w in vs:
                cases.append((i, k, qtype, quantize(chunk, qtype, x, w)))
    out += struct.pack("<I", len(cases))
    for i, k, qtype, b in cases:
        out += struct.pack("<IIII", i, k, int(qtype), len(b)) + b
    OUT.write_bytes(out)
    print(f"{OUT}: {len(out)} bytes, {len(inputs)} inputs, {len(imats)} imatrices, {len(cases)} cases")


if __name__ == "__main__":
    main()
