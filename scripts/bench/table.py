#!/usr/bin/env python3
"""Prints the side-by-side table of a bench-vs-llamacpp.sh results file (markdown)."""
import json
import sys

rows = json.load(open(sys.argv[1]))
# A before/after run (bench-vs-llamacpp.sh with CRIA_BASE): two more columns.
with_base = any("base" in r for r in rows)
extra_head = " cria before t/s | after / before |" if with_base else ""
print("| model | threads | test | llama.cpp t/s | cria t/s | cria / llama.cpp | cria GB/s | cria roofline | llama.cpp roofline | cria peak RSS / (file + KV) |" + extra_head)
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_base else ""))
for r in rows:
    lb = {}
    for x in r["llama"]:
        test = f"pp{x['n_prompt']}" if x["n_prompt"] else f"tg{x['n_gen']}"
        lb[(x["n_threads"], test)] = x
    base = {(b["threads"], b["test"]): b for b in r.get("base", [])}
    for c in r["cria"]:
        key = (c["threads"], c["test"])
        l = lb.get(key)
        lt = l["avg_ts"] if l else float("nan")
        ratio = c["avg_ts"] / lt if l else float("nan")
        roof = c.get("roofline")
        lroof = (c["bytes_per_token"] * lt / c["read_bandwidth"]) if (roof is not None and l) else None
        mem = ""
        if c.get("peak_rss_bytes") and c.get("kv_bytes") is not None:
            mem = f"{c['peak_rss_bytes'] / (c['size_bytes'] + c['kv_bytes']):.2f}"
        pct = lambda v: "" if v is None else f"{100 * v:.0f}%"
        print(f"| {r['name']} | {c['threads']} | {c['test']} | {lt:.1f} ± {l['stddev_ts'] if l else 0:.1f} | "
              f"{c['avg_ts']:.1f} ± {c['stddev_ts']:.1f} | **{ratio:.2f}x** | "
              f"{'' if c.get('gbps') is None else format(c['gbps'], '.1f')} | {pct(roof)} | {pct(lroof)} | {mem} |"
              + (f" {base[key]['avg_ts']:.1f} ± {base[key]['stddev_ts']:.1f} | {c['avg_ts'] / base[key]['avg_ts']:.3f} |"
                 if key in base else (" | |" if with_base else "")))
