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

`--smollm2` instead writes tests/fixtures/quant_weighted_smollm2.txt: sha256 of ggml_quantize_chunk's
output over whole SmolLM2-135M tensors (from the F16 GGUF), with and without the importance weights
SMOL_IMATRIX (a formula, so the Rust side needs no data file); quantize_weighted.rs checks them when
ref/bench/smollm2-F16.gguf is present and says SKIPPED otherwise.

`--iq` instead writes tests/fixtures/quant_iq.bin (same layout; tests/quantize_iq.rs reads it): the
lattice IQ types (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) on awkward rows of 256 and
512 and the SmolLM2 ffn_down rows, with the three importance matrices, and without one for the types
ggml quantizes without (IQ3_XXS, IQ3_S, IQ2_S, IQ1_M; ggml_quantize_chunk asserts that IQ2_XXS,
IQ2_XS and IQ1_S get one).

`--iq-smollm2` instead writes tests/fixtures/quant_iq_smollm2.txt, the same hashes for the lattice
IQ types over the three ffn_down tensors (with SMOL_IMATRIX, and without where ggml allows it).

`--fma-check` instead compiles ggml-quants.c with `gcc -O3 -march=haswell` (FMA available, so GCC's
default -ffp-contract=fast fuses a*b+c, as any build with FMA in its baseline would, e.g. aarch64)
into a scratch library and counts the fixture blocks whose bytes that build changes: the evidence
that the no-FMA build is a different reference, not noise.
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

    imats = []
    for i, (_, x) in enumerate(inputs):
        for name, w in imatrices(rng, x.shape[1]):
            imats.append((name, i, w))

    cases = []
    for i, (name, x) in enumerate(inputs):
        types = TYPES_256 if x.shape[1] % 256 == 0 else TYPES_32
        variants = [(NONE, None)] + [(k, w) for k, (_, j, w) in enumerate(imats) if j == i]
        for qtype in types:
            # the types that ignore the weights get one weighted case, not three
            vs = variants[:2] if qtype in IGNORES_WEIGHTS else variants
            for k, w in vs:
                cases.append((i, k, qtype, quantize(chunk, qtype, x, w)))
    write_fixture(OUT, inputs, imats, cases)


IQ_TYPES = [T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M]
IQ_NO_IMATRIX = (T.IQ3_XXS, T.IQ3_S, T.IQ2_S, T.IQ1_M)
IQ_OUT = HERE / "fixtures" / "quant_iq.bin"


def iq_main():
    chunk = load_chunk()
    rng = np.random.default_rng(20261208)
    inputs = [(f"awkward-{n}", awkward_rows(rng, n)) for n in (256, 512)]
    inputs.append(("smollm2:blk.3.ffn_down", smol_rows("blk.3.ffn_down.weight", [0, 1, 100])))
    imats = [(name, i, w) for i, (_, x) in enumerate(inputs) for name, w in imatrices(rng, x.shape[1])]
    cases = []
    for i, (_, x) in enumerate(inputs):
        variants = [(k, w) for k, (_, j, w) in enumerate(imats) if j == i]
        for qtype in IQ_TYPES:
            vs = ([(NONE, None)] if qtype in IQ_NO_IMATRIX else []) + variants
            for k, w in vs:
                cases.append((i, k, qtype, quantize(chunk, qtype, x, w)))
    write_fixture(IQ_OUT, inputs, imats, cases)


def write_fixture(path, inputs, imats, cases):
    out = bytearray(b"CRWQ" + struct.pack("<I", 1))
    out += struct.pack("<I", len(inputs))
    for name, x in inputs:
        out += s(name) + struct.pack("<II", x.shape[1], x.shape[0]) + x.astype("<f4").tobytes()
    out += struct.pack("<I", len(imats))
    for name, i, w in imats:
        out += s(name) + struct.pack("<I", i) + w.astype("<f4").tobytes()
    out += struct.pack("<I", len(cases))
    for i, k, qtype, b in cases:
        out += struct.pack("<IIII", i, k, int(qtype), len(b)) + b
    path.write_bytes(out)
    print(f"{path}: {len(out)} bytes, {len(inputs)} inputs, {len(imats)} imatrices, {len(cases)} cases")


def read_fixture():
    """The fixture back: inputs [(name, rows)], imatrices [(name, input index, weights)], cases
    [(input index, imatrix index or NONE, type, expected bytes)]."""
    b = OUT.read_bytes()
    off = 8

    def u32():
        nonlocal off
        off += 4
        return struct.unpack_from("<I", b, off - 4)[0]

    def name():
        nonlocal off
        n = u32()
        off += n
        return b[off - n:off].decode()

    def f32s(n):
        nonlocal off
        off += 4 * n
        return np.frombuffer(b, dtype="<f4", count=n, offset=off - 4 * n)

    inputs, imats, cases = [], [], []
    for _ in range(u32()):
        nm, n, r = name(), u32(), u32()
        inputs.append((nm, f32s(n * r).reshape(r, n)))
    for _ in range(u32()):
        nm, i = name(), u32()
        imats.append((nm, i, f32s(inputs[i][1].shape[1])))
    for _ in range(u32()):
        i, k, t, n = u32(), u32(), u32(), u32()
        off += n
        cases.append((i, k, T(t), b[off - n:off]))
    return inputs, imats, cases


# whole tensors: the k-types and IQ4_XS need rows of whole 256-blocks (only ffn_down, 1536 wide, in
# SmolLM2); the 32-block types take the 576-wide tensors too
SMOL_K = (["blk.0.ffn_down.weight", "blk.10.ffn_down.weight", "blk.29.ffn_down.weight"],
          [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS])
SMOL_32 = (["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.ffn_gate.weight"],
           [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL])
SMOL_OUT = HERE / "fixtures" / "quant_weighted_smollm2.txt"
# --iq-smollm2: the lattice IQ types need rows of whole 256-blocks too
SMOL_IQ_NAMES = SMOL_K[0]
SMOL_IQ_OUT = HERE / "fixtures" / "quant_iq_smollm2.txt"


def smol_imatrix(n):
    """Importance weights by formula (exact in f32): 0 at every 11th column, else
    ((j * 7919) % 1009) / 64."""
    j = np.arange(n, dtype=np.int64)
    w = ((j * 7919) % 1009).astype(np.float32) / np.float32(64.0)
    w[j % 11 == 0] = 0.0
    return w


def smollm2_hashes(iq=False):
    import hashlib
    chunk = load_chunk()
    r = GGUFReader(str(REF / "bench" / "smollm2-F16.gguf"))
    tensors = {t.name: t for t in r.tensors}
    lines = []
    for names, types in ([(SMOL_IQ_NAMES, IQ_TYPES)] if iq else (SMOL_K, SMOL_32)):
        for name in names:
            t = tensors[name]
            x = np.ascontiguousarray(np.asarray(t.data).astype(np.float32))
            for qtype in types:
                for imat in (None, smol_imatrix(x.shape[1])):
                    if iq and imat is None and qtype not in IQ_NO_IMATRIX:
                        continue
                    h = hashlib.sha256(quantize(chunk, qtype, x, imat)).hexdigest()
                    lines.append(f"{name} {qtype.name} {int(imat is not None)} {h}")
    out = SMOL_IQ_OUT if iq else SMOL_OUT
    out.write_text("".join(line + "\n" for line in lines))
    print(f"{out}: {len(lines)} hashes")


def fma_check():
    import subprocess
    import tempfile
    ggml = REF / "llama.cpp" / "ggml"
    bindir = REF / "llama.cpp" / "build" / "bin"
    tmp = Path(tempfile.mkdtemp())
    so = tmp / "libquants_fma.so"
    subprocess.run(["gcc", "-O3", "-march=haswell", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-DNDEBUG",
                    "-D_GNU_SOURCE", f"-I{ggml}/src", f"-I{ggml}/include", str(ggml / "src" / "ggml-quants.c"),
                    "-o", str(so), f"-L{bindir}", f"-Wl,-rpath,{bindir}", "-lggml-base"], check=True)
    lib = ctypes.CDLL(str(so), mode=ctypes.RTLD_LOCAL)
    inputs, imats, cases = read_fixture()
    stats = {}
    for i, k, qt, want in cases:
        if qt in IGNORES_WEIGHTS[:3]:
            continue
        fn = getattr(lib, "quantize_" + qt.name.lower().replace("_k", "_K"))
        fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p]
        x = np.ascontiguousarray(inputs[i][1])
        out = (ctypes.c_uint8 * len(want))()
        fn(x.ctypes.data, ctypes.addressof(out), x.shape[0], x.shape[1],
           None if k == NONE else np.ascontiguousarray(imats[k][2]).ctypes.data)
        ts = GGML_QUANT_SIZES[qt][1]
        diff = sum(bytes(out)[j:j + ts] != want[j:j + ts] for j in range(0, len(want), ts))
        st = stats.setdefault((qt.name, k != NONE), [0, 0, 0, 0])
        st[0] += 1
        st[1] += diff > 0
        st[2] += diff
        st[3] += len(want) // ts
    for (name, w), (c, cd, bd, nb) in sorted(stats.items()):
        print(f"{name:7} imatrix {w!s:5}: FMA build differs in {cd}/{c} cases, {bd}/{nb} blocks")


if __name__ == "__main__":
    {"--fma-check": fma_check, "--smollm2": smollm2_hashes, "--iq": iq_main,
     "--iq-smollm2": lambda: smollm2_hashes(iq=True)}.get(sys.argv[1] if sys.argv[1:] else "", main)()
