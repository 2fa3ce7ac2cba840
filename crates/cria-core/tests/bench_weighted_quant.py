#!/usr/bin/env python3
"""Rows per second of llama.cpp's ggml_quantize_chunk (libggml-base.so, through ctypes, one
thread, per CPU second) on the rows the Rust `bench_rows_per_second` test uses: SmolLM2 blk.3.ffn_down rows (1536
wide) from tests/fixtures/quant_weighted.bin, tiled to 512 rows, with and without the fixture's
"rand" importance matrix for that input. A benchmark to read side by side with
`cargo test --profile ci -p cria-core --test quantize_weighted bench -- --ignored --nocapture`.

Run: python3 crates/cria-core/tests/bench_weighted_quant.py [--iq]

`--iq`: the lattice IQ types instead, on the same rows of tests/fixtures/quant_iq.bin (compare with
`cargo test --profile ci -p cria-core --test quantize_iq bench -- --ignored --nocapture`).
"""

import sys
import time

import numpy as np

import gen_weighted_quant_fixtures as gen
from gguf import GGMLQuantizationType as T


def main():
    iq = sys.argv[1:] == ["--iq"]
    chunk = gen.load_chunk()
    if iq:
        gen.OUT = gen.IQ_OUT
    inputs, imats, _ = gen.read_fixture()
    k = [nm for nm, _ in inputs].index("smollm2:blk.3.ffn_down")
    rows = inputs[k][1]
    w = next(m for nm, i, m in imats if i == k and nm == "rand")
    nrows = 512
    src = np.ascontiguousarray(np.resize(rows.reshape(-1), nrows * rows.shape[1]).reshape(nrows, -1))
    types = gen.IQ_TYPES if iq else [T.Q4_K, T.Q6_K, T.Q5_K, T.Q3_K, T.Q2_K, T.IQ4_XS, T.Q4_0]
    if iq:  # build the grid tables outside the timing
        for qtype in types:
            gen.quantize(chunk, qtype, src[:1], w)
    for qtype in types:
        for imat in [None, w]:
            if imat is None and iq and qtype not in gen.IQ_NO_IMATRIX:
                continue
            # best of 7 runs of 0.2 s of this thread's CPU time (the machine is shared: wall time
            # would count other processes' turns); the Rust side measures the same way
            rate = 0.0
            for _ in range(7):
                t, reps = time.thread_time(), 0
                while reps < 2 or time.thread_time() - t < 0.2:
                    gen.quantize(chunk, qtype, src, imat)
                    reps += 1
                rate = max(rate, reps * nrows / (time.thread_time() - t))
            print(f"ggml {qtype.name:7} imatrix {imat is not None!s:5}: {rate:9.0f} rows/s of {rows.shape[1]}")


if __name__ == "__main__":
    main()
