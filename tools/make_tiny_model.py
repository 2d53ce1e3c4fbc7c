#!/usr/bin/env python3
"""make_tiny_model: write a tiny Hugging Face checkpoint directory (config.json + safetensors,
optionally sharded with model.safetensors.index.json) with deterministic random weights, using
only the Python standard library. The test fixtures under tests/fixtures/ are made with it; each
fixture's exact command is in tests/fixtures/README.md.

Vocabulary convention (byte-level): ids 0..255 are the bytes, 256 is BOS, 257 is EOS, the rest
are unused. Weights are uniform: embeddings in [-1, 1), linear layers in +-sqrt(3 / fan_in)
(unit-variance outputs), norm weights 1 +- 0.2, biases +- 0.5.

Phi-3 (--arch phi3) writes the fused self_attn.qkv_proj (rows q, k, v) and mlp.gate_up_proj
(rows gate, up) that transformers' Phi3ForCausalLM expects; --longrope ORIG adds Phi-3's
rope_scaling {"type": "longrope"} with per-dimension short_factor / long_factor lists and
original_max_position_embeddings ORIG (max_position_embeddings 4096).

usage: tools/make_tiny_model.py OUT_DIR [--arch llama|mistral|qwen2|phi3] [--dtype f32|f16|bf16]
       [--shards N] [--tied] [--rope-llama3] [--longrope ORIG] [--sliding-window W] [--hidden 72]
       [--intermediate 100] [--layers 2] [--heads 4] [--kv-heads 2] [--vocab 300]
       [--head-dim-in-config] [--seed 1]
"""
import argparse
import json
import math
import os
import random
import struct
import sys

ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
ELEM = {"f32": 4, "f16": 2, "bf16": 2}


def f32_to_bf16_bits(x):
    """Round-to-nearest-even of the float32 value of x to bfloat16 bits."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16) & 0xFFFF


def encode(values, dtype):
    if dtype == "f32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "f16":
        return struct.pack("<%de" % len(values), *values)
    return struct.pack("<%dH" % len(values), *[f32_to_bf16_bits(v) for v in values])


def make_tensors(a, rng):
    """Ordered list of (name, shape, values) in Hugging Face naming."""
    C, F, V, L = a.hidden, a.intermediate, a.vocab, a.layers
    d = C // a.heads
    Dq, Dkv = a.heads * d, a.kv_heads * d
    out = []

    def uni(lo, hi, n):
        return [rng.uniform(lo, hi) for _ in range(n)]

    def linear(name, o, i):
        s = math.sqrt(3.0 / i)
        out.append((name, [o, i], uni(-s, s, o * i)))

    def fused(name, parts):
        # Phi-3: the separate projections' rows stacked in order, as one (sum of rows, in) matrix
        vals, rows = [], 0
        for o, i in parts:
            s = math.sqrt(3.0 / i)
            vals += uni(-s, s, o * i)
            rows += o
        out.append((name, [rows, parts[0][1]], vals))

    def norm(name, n):
        out.append((name, [n], [1.0 + v for v in uni(-0.2, 0.2, n)]))

    out.append(("model.embed_tokens.weight", [V, C], uni(-1.0, 1.0, V * C)))
    for l in range(L):
        p = "model.layers.%d." % l
        norm(p + "input_layernorm.weight", C)
        if a.arch == "phi3":
            fused(p + "self_attn.qkv_proj.weight", [(Dq, C), (Dkv, C), (Dkv, C)])
        else:
            linear(p + "self_attn.q_proj.weight", Dq, C)
            linear(p + "self_attn.k_proj.weight", Dkv, C)
            linear(p + "self_attn.v_proj.weight", Dkv, C)
        if a.arch == "qwen2":
            for nm, n in (("q", Dq), ("k", Dkv), ("v", Dkv)):
                out.append((p + "self_attn.%s_proj.bias" % nm, [n], uni(-0.5, 0.5, n)))
        linear(p + "self_attn.o_proj.weight", C, Dq)
        norm(p + "post_attention_layernorm.weight", C)
        if a.arch == "phi3":
            fused(p + "mlp.gate_up_proj.weight", [(F, C), (F, C)])
        else:
            linear(p + "mlp.gate_proj.weight", F, C)
            linear(p + "mlp.up_proj.weight", F, C)
        linear(p + "mlp.down_proj.weight", C, F)
    norm("model.norm.weight", C)
    if not a.tied:
        linear("lm_head.weight", V, C)
    return out


def write_safetensors(path, tensors, dtype):
    """Header padded with spaces to a multiple of 8 so the data section is 8-byte aligned;
    tensors packed back to back (the safetensors library insists on no gaps)."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name, shape, values in tensors:
        b = encode(values, dtype)
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def make_config(a):
    c = {
        "architectures": [ARCHS[a.arch]],
        "model_type": a.arch,
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "vocab_size": a.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": bool(a.tied),
        "bos_token_id": 256,
        "eos_token_id": 257,
        "torch_dtype": TORCH_DTYPE[a.dtype],
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if a.arch == "llama":
        c["attention_bias"] = False
        c["mlp_bias"] = False
    if a.arch == "qwen2":
        c["use_sliding_window"] = False
    if a.arch == "mistral":
        c["sliding_window"] = None
    if a.arch == "phi3":
        c["sliding_window"] = a.sliding_window
        c["pad_token_id"] = a.vocab - 1  # Phi3Config's default 32000 is outside a tiny vocabulary
        c["resid_pdrop"] = 0.0
        c["embd_pdrop"] = 0.0
        c["original_max_position_embeddings"] = 4096
    elif a.sliding_window is not None:
        c["sliding_window"] = a.sliding_window
    if a.head_dim_in_config:
        c["head_dim"] = a.hidden // a.heads
    if a.rope_llama3:
        # Small original context so that, at head_dim 18, some frequencies are scaled, some kept
        # and some interpolated (wavelengths 2*pi .. ~7e5 against the 16..64 band).
        c["rope_theta"] = 500000.0
        c["max_position_embeddings"] = 8192
        c["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    if a.longrope:
        # Phi-3-style LongRoPE: the short factors near 1, the long ones growing with the dimension
        # (as in Phi-3-mini-128k), drawn from their own stream so the weights stay as without it.
        half = (a.hidden // a.heads) // 2
        r = random.Random(a.seed * 7919 + 17)
        c["max_position_embeddings"] = 4096
        c["original_max_position_embeddings"] = a.longrope
        c["rope_scaling"] = {
            "type": "longrope",
            "short_factor": [round(1.0 + 0.5 * r.random() * i / half, 6) for i in range(half)],
            "long_factor": [round(1.0 + 40.0 * (i / half) ** 2 + r.random(), 6) for i in range(half)],
        }
    return c


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama")
    ap.add_argument("--dtype", choices=sorted(ELEM), default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--rope-llama3", action="store_true")
    ap.add_argument("--longrope", type=int, metavar="ORIG", help="longrope rope_scaling, original context ORIG")
    ap.add_argument("--sliding-window", type=int, metavar="W")
    ap.add_argument("--hidden", type=int, default=72)
    ap.add_argument("--intermediate", type=int, default=100)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--head-dim-in-config", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.hidden % a.heads or a.heads % a.kv_heads or (a.hidden // a.heads) % 2:
        ap.error("need hidden %% heads == 0, heads %% kv_heads == 0 and an even head dim")
    if a.vocab < 258 or a.shards < 1:
        ap.error("need vocab >= 258 (bytes + BOS + EOS) and shards >= 1")
    rng = random.Random(a.seed)
    tensors = make_tensors(a, rng)
    os.makedirs(a.out, exist_ok=True)
    for fn in os.listdir(a.out):
        if fn.endswith(".safetensors") or fn == "model.safetensors.index.json":
            os.remove(os.path.join(a.out, fn))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(make_config(a), f, indent=2)
        f.write("\n")
    if a.shards == 1:
        write_safetensors(os.path.join(a.out, "model.safetensors"), tensors, a.dtype)
    else:
        # Contiguous groups of roughly equal byte size, in tensor order.
        total = sum(len(v) for _, _, v in tensors)
        groups, cur, acc = [], [], 0
        for t in tensors:
            cur.append(t)
            acc += len(t[2])
            if acc >= total * (len(groups) + 1) / a.shards and len(groups) < a.shards - 1:
                groups.append(cur)
                cur = []
        if cur:
            groups.append(cur)
        n = len(groups)
        wm, size = {}, 0
        for i, g in enumerate(groups):
            fn = "model-%05d-of-%05d.safetensors" % (i + 1, n)
            size += write_safetensors(os.path.join(a.out, fn), g, a.dtype)
            for name, _, _ in g:
                wm[name] = fn
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": size}, "weight_map": wm}, f, indent=2)
            f.write("\n")
    nparams = sum(len(v) for _, _, v in tensors)
    print("%s: %s %s, %d parameters" % (a.out, ARCHS[a.arch], a.dtype, nparams))


if __name__ == "__main__":
    main(sys.argv[1:])
