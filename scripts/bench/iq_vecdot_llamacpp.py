#!/usr/bin/env python3
"""ns per block of llama.cpp's x86 IQ vec_dot kernels (ggml_vec_dot_iq*_q8_K in libggml-cpu,
called through ctypes), to set beside `cargo run --profile ci -p cria-kernels --example
matmul_speed -- --kernel IQ3_XXS ...` (cria's vec_dot, 1 column, ns per block).

Timing: thread CPU time of many calls on a 64-block row (L1-resident), minus the same on a
1-block row (the ctypes call overhead), divided by 63. Best of 15 rounds; noisy on a busy machine.
Run: python3 scripts/bench/iq_vecdot_llamacpp.py
"""
import ctypes
import os
import time
from pathlib import Path

import numpy as np

REF = Path(os.environ.get("CRIA_REF_DIR", Path(__file__).resolve().parents[2] / "ref"))
cpu = ctypes.CDLL(str(REF / "llama.cpp/build/bin/libggml-cpu.so"))
cpu.ggml_cpu_init()
TYPES = [("IQ3_XXS", 98), ("IQ3_S", 110), ("IQ2_XXS", 66), ("IQ2_XS", 74), ("IQ2_S", 82),
         ("IQ1_S", 50), ("IQ1_M", 56), ("IQ4_XS", 136), ("Q2_K", 84)]
rng = np.random.default_rng(1)


def per_call(fn, nb, w, a, calls):
    out = ctypes.c_float()
    best = 1e9
    for _ in range(15):
        t0 = time.thread_time()
        for _ in range(calls):
            fn(nb * 256, ctypes.byref(out), 0, w, 0, a, 0, 1)
        best = min(best, (time.thread_time() - t0) / calls)
    return best


for name, bs in TYPES:
    fn = getattr(cpu, f"ggml_vec_dot_{name.lower().replace('_k', '_K')}_q8_K")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = None
    nb = 64
    w = rng.integers(0, 256, nb * bs, dtype=np.uint8)
    for b in range(nb):  # small finite f16 scales (IQ1_M keeps its scale in the top nibbles)
        if name != "IQ1_M":
            off = 80 if name == "Q2_K" else 0
            w[b * bs + off:b * bs + off + 2] = np.array([0.01], np.float16).view(np.uint8)
    x = rng.standard_normal(nb * 256).astype(np.float32)
    a = np.zeros(nb * 292, np.uint8)
    cpu.quantize_row_q8_K.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    cpu.quantize_row_q8_K(x.ctypes.data, a.ctypes.data, nb * 256)
    t16 = per_call(fn, nb, w.ctypes.data, a.ctypes.data, 5000)
    t1 = per_call(fn, 1, w.ctypes.data, a.ctypes.data, 5000)
    print(f"{name:>8}  llama.cpp 1 col: {(t16 - t1) / (nb - 1) * 1e9:6.2f} ns per block")
