#!/usr/bin/env python3
"""Appends one model's row to a bench-vs-llamacpp.sh results file, pooling the rounds.

    pool.py RESULTS NAME lb-1.json cria-pp-1.json cria-tg-1.json [lb-2.json ...]
    pool.py --base RESULTS NAME lb-1.json cria-pp-1.json cria-tg-1.json base-pp-1.json base-tg-1.json ...

With --base, rounds are of five: an older cria build's prompt and generation JSON follow, pooled
the same way into the row's "base" (bench-vs-llamacpp.sh's CRIA_BASE).

Files come in rounds of three (llama-bench's JSON, cria's prompt JSON, cria's generation JSON).
Per (threads, test): the samples of every round are pooled into one mean and standard deviation
(what llama-bench and `cria bench` print for their own repetitions); for cria, the read
bandwidth is the median of the rounds' probes (the roofline is judged against it), the peak RSS
the largest, and the logit hashes must agree: `cria bench` runs one fixed token stream per test,
so a test's hash is the same in every round and at every thread count. A disagreement is
printed and recorded in the row (`logits_hash_agree: false`); bench-vs-llamacpp.sh fails on it
after printing the table.
"""
import json
import statistics
import sys


def stats(samples):
    mean = statistics.fmean(samples)
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return mean, sd


def pool_llama(entries):
    by = {}
    for e in entries:
        by.setdefault((e["n_threads"], e["n_prompt"], e["n_gen"]), []).append(e)
    out = []
    for group in by.values():
        e = dict(group[0])
        e["samples_ts"] = [s for g in group for s in g["samples_ts"]]
        e["avg_ts"], e["stddev_ts"] = stats(e["samples_ts"])
        out.append(e)
    return out


def pool_cria(entries):
    by = {}
    for e in entries:
        by.setdefault((e["threads"], e["test"]), []).append(e)
    out = []
    for group in by.values():
        c = dict(group[0])
        c["samples_ts"] = [s for g in group for s in g["samples_ts"]]
        c["avg_ts"], c["stddev_ts"] = stats(c["samples_ts"])
        c["read_bandwidth"] = statistics.median(g["read_bandwidth"] for g in group)
        if c.get("bytes_per_token"):
            c["gbps"] = c["bytes_per_token"] * c["avg_ts"] / 1e9
            c["roofline"] = c["bytes_per_token"] * c["avg_ts"] / c["read_bandwidth"]
        rss = [g["peak_rss_bytes"] for g in group if g.get("peak_rss_bytes")]
        c["peak_rss_bytes"] = max(rss) if rss else None
        c["rounds"] = len(group)
        out.append(c)
    # One hash per test, whatever the round or thread count.
    for test in {c["test"] for c in out}:
        hashes = sorted({e["logits_hash"] for e in entries if e["test"] == test})
        for c in out:
            if c["test"] == test:
                c["logits_hash"] = "/".join(hashes)
                c["logits_hash_agree"] = len(hashes) == 1
        if len(hashes) > 1:
            print(f"error: {out[0]['model']} {test}: logit hashes differ between rounds or thread counts: {hashes}", file=sys.stderr)
    return sorted(out, key=lambda c: (c["threads"], c["test"].startswith("tg")))


def main():
    args = sys.argv[1:]
    with_base = args[:1] == ["--base"]
    results, name, *files = args[1:] if with_base else args
    per = 5 if with_base else 3
    if not files or len(files) % per:
        sys.exit(f"pool.py: files come in rounds of {per} (llama-bench, cria pp, cria tg"
                 + (", base pp, base tg)" if with_base else ")"))
    llama, cria, base = [], [], []
    for i in range(0, len(files), per):
        llama += json.load(open(files[i]))
        cria += json.load(open(files[i + 1])) + json.load(open(files[i + 2]))
        if with_base:
            base += json.load(open(files[i + 3])) + json.load(open(files[i + 4]))
    rows = json.load(open(results))
    row = {"name": name, "llama": pool_llama(llama), "cria": pool_cria(cria)}
    if with_base:
        row["base"] = pool_cria(base)
    rows.append(row)
    json.dump(rows, open(results, "w"), indent=1)


if __name__ == "__main__":
    main()
