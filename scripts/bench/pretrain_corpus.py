#!/usr/bin/env python3
"""The English corpus of docs/PRETRAINING.md: the World English Bible (public domain; Debian
package `sword-text-web`, a SWORD zText module) as JSONL, one chapter a document
({"text": ...}, one paragraph a line).

    apt-get download sword-text-web && dpkg-deb -x sword-text-web_*.deb x
    python3 scripts/bench/pretrain_corpus.py x/usr/share/sword/modules/texts/ztext/engWEB2015eb web.jsonl

zText: NAME.bzs holds (offset, size, uncompressed size) u32 triples of zlib blocks in NAME.bzz;
the blocks in order are the OSIS text of the testament. Footnotes (<note>...</note>) are dropped,
every other tag is removed keeping its text, paragraph/line/title ends become line breaks."""
import json
import re
import struct
import sys
import zlib


def module_text(d):
    out = []
    for t in ["ot", "nt"]:
        idx = open(f"{d}/{t}.bzs", "rb").read()
        dat = open(f"{d}/{t}.bzz", "rb").read()
        for i in range(len(idx) // 12):
            off, size, _ = struct.unpack("<III", idx[i * 12 : i * 12 + 12])
            out.append(zlib.decompress(dat[off : off + size]).decode("utf-8"))
    return "".join(out)


def plain(osis):
    s = re.sub(r"<note\b[^>]*>.*?</note>", "", osis, flags=re.S)
    s = re.sub(r"<milestone\b[^>]*/>", "", s)
    # Paragraph, line, title and chapter boundaries: new lines.
    s = re.sub(r'<div\b[^>]*eID[^>]*/>|</title>|<lb\b[^>]*/>|<l\b[^>]*eID[^>]*/>|</l>|<chapter\b[^>]*/>', "\n", s)
    s = re.sub(r"<[^>]+>", "", s)
    lines = [re.sub(r"\s+", " ", l).strip() for l in s.split("\n")]
    return "\n".join(l for l in lines if len(l) > 0) + "\n"


if __name__ == "__main__":
    docs = [plain(c) for c in re.split(r"<chapter\b[^>]*eID[^>]*/>", module_text(sys.argv[1]))]
    docs = [d for d in docs if d.strip()]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    n = sum(len(d) for d in docs)
    print(f"{len(docs)} documents, {n} characters, {sum(len(d.split()) for d in docs)} words")
