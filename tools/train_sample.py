#!/usr/bin/env python3
"""train_sample: trains attnscope's shipped sample model (samples/models/) on one GPU in ~8 minutes.

A byte-level LlamaForCausalLM (ids 0..255 = bytes, 256 BOS, 257 EOS, 258 PAD; vocab 264) with GQA
(8 query heads over 2 KV heads, head dim 64), RoPE theta 10000, trained at context 4160, on English
text (tools/build_corpus.py) mixed with synthetic long-range tasks so that retrieval heads form:
passkey retrieval, key-value lookup and copying. bf16 autocast, SDPA attention, fixed seeds; training
stops itself on a wall-clock budget, saves with save_pretrained (bf16 safetensors), reloads the saved
directory through transformers and measures passkey accuracy at several lengths in PyTorch.

    python3 tools/train_sample.py --corpus .carry/corpus/corpus.txt \
        --haystack samples/prompts/haystack.txt --out /tmp/model --budget 430

The passkey prompt format here is the one `attnscope eval passkey` builds (engine/eng_eval.c):
    BOS + hay[:p] + NEEDLE + hay[p:] + QUESTION   -> greedy answer " NNNNN"
with p = depth * len(hay) moved forward to just after the next space (p = 0 stays 0). attnscope moves
the answer's leading space into the prompt (so its sparse prefill must predict the first digit); the
check here, all six answer tokens argmax-correct under teacher forcing, is the same greedy answer."""
import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BOS, EOS, PAD, VOCAB = 256, 257, 258, 264
NEEDLE = " The pass key is {k}. Remember it. {k} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
FILLER = b"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def log(f, *a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    if f:
        f.write(s + "\n")
        f.flush()


class Data:
    """Builds rows of T+1 token ids plus an answer mask (1 where the token is an answer byte)."""

    def __init__(self, corpus, rng):
        self.c = corpus
        self.rng = rng
        self.filler = np.frombuffer(FILLER * 600, dtype=np.uint8)

    def text(self, n):
        o = int(self.rng.integers(0, len(self.c) - n))
        return self.c[o:o + n]

    def hay(self, n, filler):
        if filler:
            o = int(self.rng.integers(0, len(FILLER)))
            return self.filler[o:o + n]
        return self.text(n)

    @staticmethod
    def cat(parts):
        arrs, mask = [], []
        for p, m in parts:
            a = np.frombuffer(p, dtype=np.uint8) if isinstance(p, (bytes, bytearray)) else p
            arrs.append(a.astype(np.int64))
            mask.append(np.full(len(a), m, dtype=np.float32))
        return np.concatenate(arrs), np.concatenate(mask)

    def passkey(self, T1):
        k = str(int(self.rng.integers(10000, 100000)))
        needle = NEEDLE.format(k=k).encode()
        ans = (" " + k).encode()
        q = QUESTION.encode()
        n = T1 - 1 - len(needle) - len(q) - len(ans) - 1
        h = self.hay(n, self.rng.random() < 0.5)
        p = int(self.rng.random() * n)
        sp = np.flatnonzero(h[p:] == 32)
        if p > 0:
            p = p + int(sp[0]) + 1 if len(sp) else n
        return self.cat([(np.array([BOS]), 0), (h[:p], 0), (needle, 0), (h[p:], 0), (q, 0),
                         (ans, 1), (b".", 0)])

    def kv(self, T1):
        alpha = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
        m = int(self.rng.integers(4, max(5, (T1 - 200) // 24)))
        keys = ["".join(chr(c) for c in self.rng.choice(alpha, 5)) for _ in range(m)]
        vals = [str(int(v)) for v in self.rng.integers(10000, 100000, m)]
        lines = "".join("key %s = %s.\n" % (a, b) for a, b in zip(keys, vals))
        j = int(self.rng.integers(0, m))
        body = ("Records:\n" + lines + "\nWhat is the value of key %s? The value is" % keys[j]).encode()
        ans = (" " + vals[j]).encode()
        n = T1 - 1 - len(body) - len(ans) - 3
        return self.cat([(np.array([BOS]), 0), (self.text(n), 0), (b"\n\n", 0), (body, 0), (ans, 1),
                         (b".", 0)])

    def copy(self, T1):
        c = int(self.rng.integers(32, (T1 - 64) // 2))
        if self.rng.random() < 0.5:
            x = self.text(c).tobytes()
        else:
            letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
            words, size = [], 0
            while size < c:
                w = self.rng.choice(letters, int(self.rng.integers(2, 9))).tobytes()
                words.append(w)
                size += len(w) + 1
            x = b" ".join(words)[:c]
        head, mid = b"\n\nCopy this text: ", b"\nCopy: "
        n = T1 - 1 - len(head) - 2 * len(x) - len(mid) - 1
        return self.cat([(np.array([BOS]), 0), (self.text(n), 0), (head, 0), (x, 0), (mid, 0), (x, 1),
                         (b"\n", 0)])

    def plain(self, T1):
        return self.cat([(np.array([BOS]), 0), (self.text(T1 - 1), 0)])

    def batch(self, B, T):
        xs, ms = [], []
        for _ in range(B):
            r = self.rng.random()
            if r < 0.45:
                x, m = self.plain(T + 1)
            elif r < 0.80:
                x, m = self.passkey(T + 1)
            elif r < 0.90:
                x, m = self.kv(T + 1)
            else:
                x, m = self.copy(T + 1)
            assert len(x) == T + 1, (len(x), T)
            xs.append(x)
            ms.append(m)
        return np.stack(xs), np.stack(ms)


def passkey_prompt(hay_src, L, depth, trial, k):
    """The eval prompt of eng_eval.c: L tokens incl. BOS; hay from hay_src at offset trial*4099."""
    needle = NEEDLE.format(k=k).encode()
    q = QUESTION.encode()
    n = L - 1 - len(needle) - len(q)
    off = (trial * 4099) % len(hay_src)
    h = (hay_src[off:] + hay_src * (n // len(hay_src) + 2))[:n]
    p = int(depth * n)
    if p > 0:  # just after the next space, so no word is split; depth 0 = the very start
        sp = h.find(b" ", p)
        p = sp + 1 if sp >= 0 else n
    ids = [BOS] + list(h[:p] + needle + h[p:] + q)
    assert len(ids) == L
    return ids


@torch.no_grad()
def eval_passkey(model, hay_src, lengths, depths, trials, dev, seed=1234):
    rng = np.random.default_rng(seed)
    res = {}
    for L in lengths:
        ok = tot = 0
        for d in depths:
            keys = [str(int(v)) for v in rng.integers(10000, 100000, trials)]
            rows = [passkey_prompt(hay_src, L, d / 100.0, t, keys[t]) + list((" " + keys[t]).encode())
                    for t in range(trials)]
            x = torch.tensor(rows, device=dev)
            pred = model(input_ids=x, use_cache=False).logits[:, L - 1:L + 5].argmax(-1)
            good = (pred == x[:, L:L + 6]).all(-1)
            ok += int(good.sum())
            tot += trials
            res["%d@%d" % (L, d)] = float(good.float().mean())
        res[str(L)] = ok / tot
    return res


def save_model(model, d, lg):
    """bf16 save_pretrained, then config.json written with the classic Llama keys (rope_theta,
    torch_dtype) that attnscope's parser and every transformers version read."""
    m2 = copy.deepcopy(model).to(torch.bfloat16)
    try:
        m2.save_pretrained(d, safe_serialization=True)
    except TypeError:
        m2.save_pretrained(d)
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    orig = dict(c)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
    c["rope_scaling"] = None
    c["torch_dtype"] = "bfloat16"
    c.pop("dtype", None)
    with open(p, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    return orig


def load_model(d, dev):
    from transformers import LlamaForCausalLM
    try:
        m = LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16)
    return m.to(dev).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--haystack", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=430.0, help="training wall-clock seconds")
    ap.add_argument("--log", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--ctx", type=int, default=4160)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens", type=int, default=65536, help="tokens per step")
    ap.add_argument("--eval-trials", type=int, default=20)
    a = ap.parse_args()
    lg = open(a.log, "w") if a.log else None
    log(lg, "command:", " ".join(sys.argv))
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers
    log(lg, "torch", torch.__version__, "transformers", transformers.__version__,
        "device", torch.cuda.get_device_name(0))

    raw = open(a.corpus, "rb").read()
    log(lg, "corpus sha256", hashlib.sha256(raw).hexdigest(), "bytes", len(raw))
    corpus = np.frombuffer(raw, dtype=np.uint8)
    hay_src = open(a.haystack, "rb").read()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    data = Data(corpus, np.random.default_rng(a.seed))
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=a.hidden, intermediate_size=a.inter,
                      num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=2,
                      head_dim=64, max_position_embeddings=a.ctx, rope_theta=10000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                      attention_bias=False, mlp_bias=False, hidden_act="silu")
    model = LlamaForCausalLM(cfg).to(dev)
    nparam = sum(p.numel() for p in model.parameters())
    log(lg, "params", nparam, "bf16 MB %.2f" % (nparam * 2 / 1e6), "attn", getattr(model.config, "_attn_implementation", "?"))

    # Fail fast: the save/reload path and the largest step's memory before the long run.
    d0 = "/tmp/roundtrip"
    save_model(model, d0, lg)
    try:
        m_re = load_model(d0, dev)
        classic = True
    except Exception as e:  # this transformers wants its own config form: keep it, add the classic keys
        log(lg, "classic config.json did not load (%r); keeping transformers' form" % (e,))
        classic = False
        orig = save_model(model, d0, lg)
        orig.update({"rope_theta": 10000.0, "torch_dtype": "bfloat16"})
        with open(os.path.join(d0, "config.json"), "w") as f:
            json.dump(orig, f, indent=2, sort_keys=True)
        m_re = load_model(d0, dev)
    xt = torch.randint(0, 256, (2, 300), device=dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        l1 = copy.deepcopy(model).to(torch.bfloat16)(input_ids=xt).logits.float()
        l2 = m_re(input_ids=xt).logits.float()
    rel = float((l1 - l2).norm() / l1.norm())
    log(lg, "roundtrip rel err %.3g" % rel, "config", open(os.path.join(d0, "config.json")).read().replace("\n", " "))
    assert rel < 1e-2, "saved model does not reload to the same logits"
    del m_re

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    phases = [(0.0, 512), (0.12, 1024), (0.25, 2048), (0.45, a.ctx)]

    def step_fn(x, m, train=True):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
        ce = F.cross_entropy(logits.float().reshape(-1, VOCAB), x[:, 1:].reshape(-1),
                             reduction="none").view(x.shape[0], -1)
        mm = m[:, 1:]
        lm = ce.mean()
        ans = (ce * mm).sum() / mm.sum().clamp(min=1.0)
        return lm, ans

    # memory check at the largest shape, no optimizer step
    T = a.ctx
    xb, mb = data.batch(a.tokens // T, T)
    lm, ans = step_fn(torch.from_numpy(xb).to(dev), torch.from_numpy(mb).to(dev))
    (lm + ans).backward()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    log(lg, "smoke step ok: lm %.3f ans %.3f, peak mem %.1f GB" % (lm.item(), ans.item(),
                                                                   torch.cuda.max_memory_allocated() / 1e9))
    data = Data(corpus, np.random.default_rng(a.seed))

    t0 = time.time()
    step, tokens = 0, 0
    warm = 150
    hist = []
    while True:
        f = (time.time() - t0) / a.budget
        if f >= 1.0:
            break
        T = [t for s, t in phases if f >= s][-1]
        B = max(1, a.tokens // T)
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        xb, mb = data.batch(B, T)
        x = torch.from_numpy(xb).pin_memory().to(dev, non_blocking=True)
        m = torch.from_numpy(mb).pin_memory().to(dev, non_blocking=True)
        model.train()
        lm, ans = step_fn(x, m)
        (lm + ans).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += B * T
        if step % 100 == 0:
            lmv, ansv = lm.item(), ans.item()
            hist.append((lmv, ansv))
            el = time.time() - t0
            log(lg, "step %5d  t %6.1fs  T %4d  lr %.2e  lm %.4f (%.3f bit/byte)  ans %.4f  %.2f Mtok/s" %
                (step, el, T, lr, lmv, lmv / math.log(2), ansv, tokens / el / 1e6))
    el = time.time() - t0
    last = hist[-5:] if hist else [(lm.item(), ans.item())]
    fl = sum(h[0] for h in last) / len(last)
    fa = sum(h[1] for h in last) / len(last)
    log(lg, "done: steps %d tokens %d time %.1fs final lm loss %.4f nats/byte (%.3f bit/byte), answer loss %.4f "
        "(mean of last %d logs)" % (step, tokens, el, fl, fl / math.log(2), fa, len(last)))

    model.eval()
    orig = save_model(model, a.out, lg)
    if not classic:
        orig.update({"rope_theta": 10000.0, "torch_dtype": "bfloat16"})
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(orig, f, indent=2, sort_keys=True)
    log(lg, "saved", a.out, sorted(os.listdir(a.out)))
    mr = load_model(a.out, dev)
    res = {}
    for name, src in (("haystack", hay_src), ("filler", FILLER * 4)):
        r = eval_passkey(mr, src, [1024, 2048, 4096, 8192], [0, 25, 50, 75, 100], a.eval_trials, dev)
        res[name] = r
        log(lg, "passkey (%s, %d trials x 5 depths, greedy, reloaded bf16 model): " % (name, a.eval_trials) +
            "  ".join("%s: %.1f%%" % (L, 100 * r[L]) for L in ("1024", "2048", "4096", "8192")))
    info = {"steps": step, "tokens": tokens, "train_seconds": el, "final_lm_loss": fl, "final_answer_loss": fa,
            "params": nparam, "corpus_sha256": hashlib.sha256(raw).hexdigest(), "passkey": res,
            "command": " ".join(sys.argv), "device": torch.cuda.get_device_name(0)}
    with open(os.path.join(a.out, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    log(lg, json.dumps(res))


if __name__ == "__main__":
    main()
