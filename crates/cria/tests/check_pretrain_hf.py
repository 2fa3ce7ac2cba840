# Usage (after `cria pretrain --data DATA -o RUN --eval-tokens N ...`): python3 check_pretrain_hf.py RUN DATA CTX N_WINDOWS
# transformers loads run/final; its mean CE over the first val windows == cria's val_loss.
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
run, data, ctx, nwin = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = AutoModelForCausalLM.from_pretrained(run + "/final", torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(run + "/final")
raw = open(data + "/val_000000.bin", "rb").read()
toks = np.frombuffer(raw[32:], dtype=np.uint16).astype(np.int64)
n = min(nwin, (len(toks) - 1) // ctx)
tot, cnt = 0.0, 0
with torch.no_grad():
    for i in range(n):
        w = torch.tensor(toks[i*ctx:i*ctx+ctx+1])[None]
        logits = m(w[:, :-1]).logits.double()
        tot += torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="sum").item(); cnt += ctx
log = [json.loads(l) for l in open(run + "/training_log.jsonl")]
cria = [l["val_loss"] for l in log if "val_loss" in l][-1]
print("windows", n, "transformers", tot / cnt, "cria", cria, "rel", abs(tot/cnt - cria)/cria)
print(repr(tok.decode(m.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=12, do_sample=False)[0])))
