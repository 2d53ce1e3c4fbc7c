#!/usr/bin/env python3
"""hf_reference: independent reference logits for the tiny test models, from Hugging Face transformers.

For each model directory given (tests/fixtures/tiny-* by default), loads it with
AutoModelForCausalLM in float32 with eager attention, runs one fixed token sequence on the CPU
(no TF32, deterministic) and writes DIR/reference.json (or OUT/<name>/reference.json with --out):
  tokens        the input ids (BOS + the bytes of a fixed sentence; byte-level vocabulary)
  last_logits   the full logits at the last position
  argmax        the greedy next token at every position
  argmax_margin top-1 minus top-2 logit at every position (ties make argmax ill-defined)
  next_logprob  log p(tokens[i+1] | tokens[..i]) for every i < n-1
tests/test_forward.c compares the CPU prefill with these (1e-4 relative L2 on last_logits).
--prefix N keeps only the first N tokens and --name FILE names the output (Phi-3's longrope
switches factors with the sequence length: tiny-phi3 has reference.json and, from
`--prefix 24 --name reference_short.json`, a sequence within its original context).

Runs where torch + transformers are installed (the GPU machine):
    python3 tools/hf_reference.py [--out DIR] [--prefix N] [--name FILE] [MODEL_DIR ...]
"""
import argparse
import glob
import json
import os
import sys

SENTENCE = (b"The quick brown fox jumps over the lazy dog; attnscope checks its CPU prefill "
            b"against transformers, token by token.")


def reference(model_dir, prefix=0):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    vocab = cfg["vocab_size"]
    bos = cfg.get("bos_token_id")
    tokens = ([bos] if isinstance(bos, int) and 0 <= bos < vocab else []) + list(SENTENCE)
    if prefix:
        tokens = tokens[:prefix]
    if max(tokens) >= vocab:
        raise SystemExit("%s: vocabulary of %d cannot hold the byte-level sequence" % (model_dir, vocab))
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([tokens], dtype=torch.long)
        logits = model(ids).logits[0].to(torch.float64)  # (n, V), computed in float32
    top2 = torch.topk(logits, 2, dim=-1).values
    logp = torch.log_softmax(logits, dim=-1)
    nxt = logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]
    return {
        "model": os.path.basename(os.path.normpath(model_dir)),
        "generator": "tools/hf_reference.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "tokens": tokens,
        "last_logits": [float(x) for x in logits[-1]],
        "argmax": [int(x) for x in logits.argmax(dim=-1)],
        "argmax_margin": [float(x) for x in (top2[:, 0] - top2[:, 1])],
        "next_logprob": [float(x) for x in nxt],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write OUT/<name>/reference.json instead of into each model directory")
    ap.add_argument("--prefix", type=int, default=0, help="only the first N tokens of the sequence")
    ap.add_argument("--name", default="reference.json", help="output file name (default reference.json)")
    ap.add_argument("models", nargs="*")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    models = a.models or sorted(glob.glob(os.path.join(here, "..", "tests", "fixtures", "tiny-*")))
    if not models:
        sys.exit("hf_reference: no model directories")
    for d in models:
        ref = reference(d, a.prefix)
        dst = os.path.join(a.out, ref["model"]) if a.out else d
        os.makedirs(dst, exist_ok=True)
        path = os.path.join(dst, a.name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        print("%s: %d tokens, last argmax %d, wrote %s" % (ref["model"], len(ref["tokens"]), ref["argmax"][-1], path))


if __name__ == "__main__":
    main()
