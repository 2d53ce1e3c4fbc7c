#!/usr/bin/env python3
"""bench/sdpa.py: PyTorch SDPA (flash and cuDNN backends) on the shapes attnscope bench uses
(bf16, causal, H query heads, GQA expanded to H KV heads so every backend runs it), timed with CUDA
events (median after warm-up), and -- given attnscope bench's JSON from the same run -- our dense
kernel's time over each backend's. Usage: sdpa.py --n 8192,16384 [--heads 32 --kv-heads 8 --dim 128]
[--reps 5] [--ours attnscope_bench.json] [--json OUT]."""
import argparse
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def time_ms(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="8192,16384,32768,65536,131072")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ours")
    ap.add_argument("--json")
    a = ap.parse_args()
    ours = {}
    if a.ours:
        with open(a.ours) as f:
            for r in json.load(f)["rows"]:
                if r["kernel"].startswith("dense (kernel"):
                    ours[int(r["n"])] = r["attn_ms"]
                elif r["kernel"].startswith("vs("):
                    ours[(int(r["n"]), "vs")] = r["total_ms"]
    dev = torch.cuda.get_device_name(0)
    print(f"sdpa.py: {dev}, torch {torch.__version__}, H={a.heads} (KV {a.kv_heads} expanded), d={a.dim}, bf16, causal")
    print(f"{'N':>8} {'backend':>8} {'ms':>9} {'TFLOP/s':>8} {'ours dense ms':>14} {'ours/theirs':>11} {'ours VS total/theirs':>21}")
    rows = []
    for n in [int(x) for x in a.n.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(n)
        q = (torch.rand(1, a.heads, n, a.dim, device="cuda", generator=g) * 4 - 2).bfloat16()
        k = (torch.rand(1, a.kv_heads, n, a.dim, device="cuda", generator=g) * 2 - 1).bfloat16()
        v = (torch.rand(1, a.kv_heads, n, a.dim, device="cuda", generator=g) * 2 - 1).bfloat16()
        rep = a.heads // a.kv_heads
        k = k.repeat_interleave(rep, dim=1).contiguous()
        v = v.repeat_interleave(rep, dim=1).contiguous()
        flops = 4.0 * a.dim * n * (n + 1) / 2 * a.heads
        for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel([be]):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), a.reps)
            except Exception as e:  # a backend that refuses the shape is reported, not fatal
                print(f"{n:>8} {name:>8}   unavailable: {str(e).splitlines()[0][:80]}")
                continue
            o = ours.get(n)
            ov = ours.get((n, "vs"))
            print(f"{n:>8} {name:>8} {ms:9.3f} {flops / ms / 1e9:8.1f} "
                  f"{(f'{o:.3f}' if o else '-'):>14} {(f'{o / ms:.3f}' if o else '-'):>11} "
                  f"{(f'{ov / ms:.3f}' if ov else '-'):>21}")
            rows.append({"n": n, "backend": name, "ms": ms, "tflops": flops / ms / 1e9, "ours_dense_ms": o,
                         "ours_vs_total_ms": ov})
        del q, k, v
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
