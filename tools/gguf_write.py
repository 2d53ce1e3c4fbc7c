#!/usr/bin/env python3
"""gguf_write: a small GGUF (v3) writer in plain python3 (no numpy, no gguf package), for test
fixtures. It converts the way llama.cpp's convert_hf_to_gguf.py does, for what attnscope reads:
  --model DIR      a Hugging Face llama / mistral / qwen2 / phi3 directory (config.json + safetensors)
                   -> metadata, tensors renamed (token_embd, blk.N.attn_q, ..., output_norm, output),
                   llama-arch q/k rows permuted for llama.cpp's interleaved RoPE, and Llama-3 rope
                   scaling written as the rope_freqs tensor. Phi-3 as Phi3MiniModel: phi3.* keys
                   (sliding_window, rope.scaling.original_context_length, rope.scaling.attn_factor),
                   fused qkv_proj -> blk.N.attn_qkv and gate_up_proj -> blk.N.ffn_up kept fused and
                   unpermuted (NEOX RoPE), longrope factors as rope_factors_long/short.weight (F32);
  --tokenizer-json FILE  a tokenizer.json -> tokenizer.ggml.* (gpt2 for byte-level BPE with merges;
                   llama (SentencePiece) with tokens, scores, token types for byte-fallback BPE).
  --outtype f32|f16|bf16|q8_0  2-D weights in this type (norms and biases stay f32; default: f32)
Usage: gguf_write.py [--model DIR] [--tokenizer-json FILE] [--outtype T] OUT.gguf"""
import argparse
import json
import math
import os
import struct
import sys

ALIGN = 32
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
GGML = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}

LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
             "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def s_bytes(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_bytes(key, vtype, value, atype=None):
    out = s_bytes(key) + struct.pack("<I", vtype)
    return out + val_bytes(vtype, value, atype)


def val_bytes(vtype, v, atype=None):
    fmt = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f",
           T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}
    if vtype == T_STR:
        return s_bytes(v)
    if vtype == T_ARR:
        body = b"".join(val_bytes(atype, x) for x in v)
        return struct.pack("<IQ", atype, len(v)) + body
    return struct.pack(fmt[vtype], v)


# ---------------------------------------------------------------- safetensors (read)

def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    hdr = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[base + a:base + b])
    return out


def to_f32_list(dtype, raw):
    if dtype == "F32":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":
        hs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return list(struct.unpack(f"<{len(hs)}f", struct.pack(f"<{len(hs)}I", *[h << 16 for h in hs])))
    raise SystemExit(f"gguf_write: unsupported safetensors dtype {dtype}")


def f32_to_bf16(x):
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    if (u & 0x7fffffff) > 0x7f800000:
        return (u >> 16) | 0x40
    u += 0x7fff + ((u >> 16) & 1)
    return (u >> 16) & 0xffff


def encode(vals, outtype):
    if outtype == "f32":
        return struct.pack(f"<{len(vals)}f", *vals)
    if outtype == "f16":
        return struct.pack(f"<{len(vals)}e", *vals)
    if outtype == "bf16":
        return struct.pack(f"<{len(vals)}H", *[f32_to_bf16(v) for v in vals])
    if outtype == "q8_0":  # llama.cpp quantize_row_q8_0_ref: d = amax / 127, q = round(x / d)
        out = bytearray()
        for b in range(0, len(vals), 32):
            blk = vals[b:b + 32]
            amax = max(abs(v) for v in blk)
            d = amax / 127.0
            inv = 1.0 / d if d else 0.0
            out += struct.pack("<e", d)
            for v in blk:
                x = v * inv
                q = int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)
                out += struct.pack("<b", max(-127, min(127, q)))
        return bytes(out)
    raise SystemExit(f"gguf_write: unknown outtype {outtype}")


def permute(vals, rows, cols, n_head):
    """llama.cpp's LlamaModel.permute: w.reshape(n_head, 2, d/2, C).swapaxes(1, 2).reshape(rows, C)."""
    d = rows // n_head
    half = d // 2
    out = [0.0] * (rows * cols)
    for h in range(n_head):
        for i in range(2):
            for j in range(half):
                src = h * d + i * half + j
                dst = h * d + 2 * j + i
                out[dst * cols:(dst + 1) * cols] = vals[src * cols:(src + 1) * cols]
    return out


def model_part(d, outtype, kvs, tensors):
    cfg = json.load(open(os.path.join(d, "config.json")))
    archname = (cfg.get("architectures") or [cfg.get("model_type", "")])[0]
    arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
            "Phi3ForCausalLM": "phi3"}.get(archname)
    if not arch:
        raise SystemExit(f"gguf_write: architecture {archname} not supported")
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    hd = cfg.get("head_dim") or C // H
    kvs += [kv_bytes("general.architecture", T_STR, arch), kv_bytes("general.name", T_STR, os.path.basename(d)),
            kv_bytes(f"{arch}.context_length", T_U32, cfg.get("max_position_embeddings", 2048)),
            kv_bytes(f"{arch}.embedding_length", T_U32, C),
            kv_bytes(f"{arch}.block_count", T_U32, cfg["num_hidden_layers"]),
            kv_bytes(f"{arch}.feed_forward_length", T_U32, cfg["intermediate_size"]),
            kv_bytes(f"{arch}.rope.dimension_count", T_U32, hd),
            kv_bytes(f"{arch}.attention.head_count", T_U32, H),
            kv_bytes(f"{arch}.attention.head_count_kv", T_U32, Hkv),
            kv_bytes(f"{arch}.attention.layer_norm_rms_epsilon", T_F32, cfg.get("rms_norm_eps", 1e-6)),
            kv_bytes(f"{arch}.rope.freq_base", T_F32, cfg.get("rope_theta", 10000.0)),
            kv_bytes("general.file_type", T_U32, {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[outtype])]
    if arch != "phi3":  # Phi3MiniModel.set_gguf_parameters writes no vocab_size (token_embd gives it)
        kvs.append(kv_bytes(f"{arch}.vocab_size", T_U32, cfg["vocab_size"]))
    rs = cfg.get("rope_scaling") or {}
    if arch == "phi3":
        phi3_part(cfg, rs, hd, kvs, tensors)
    if hd != C // H:
        kvs += [kv_bytes(f"{arch}.attention.key_length", T_U32, hd),
                kv_bytes(f"{arch}.attention.value_length", T_U32, hd)]
    for k, key in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        if isinstance(cfg.get(k), int):
            kvs.append(kv_bytes(key, T_U32, cfg[k]))
    if rs.get("rope_type", rs.get("type")) == "llama3":  # as convert_hf_to_gguf: per-frequency factors
        base, factor = cfg.get("rope_theta", 10000.0), rs["factor"]
        low, high, old = rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        lw, hw = old / low, old / high
        rf = []
        for i in range(0, hd, 2):
            freq = 1.0 / (base ** (i / hd))
            wl = 2 * math.pi / freq
            if wl < hw:
                rf.append(1.0)
            elif wl > lw:
                rf.append(float(factor))
            else:
                s = (old / wl - low) / (high - low)
                rf.append(1 / ((1 - s) / factor + s))
        tensors.append(("rope_freqs.weight", [len(rf)], 0, struct.pack(f"<{len(rf)}f", *rf)))
    st = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    for fn in files:
        st.update(read_safetensors(os.path.join(d, fn)))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
           "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
           "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
           "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
           "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
           "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
           # Phi-3's fused projections: llama.cpp keeps them fused (ffn_up = gate rows, then up rows)
           "self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight"}
    for name in sorted(st):
        dtype, shape, raw = st[name]
        if name in names:
            gname = names[name]
        elif name.startswith("model.layers."):
            parts = name.split(".", 3)
            if parts[3] not in sub:
                raise SystemExit(f"gguf_write: unexpected tensor {name}")
            gname = f"blk.{parts[2]}.{sub[parts[3]]}"
        else:
            raise SystemExit(f"gguf_write: unexpected tensor {name}")
        vals = to_f32_list(dtype, raw)
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            nh = H if ".attn_q." in gname else Hkv
            vals = permute(vals, shape[0], shape[1] if len(shape) > 1 else 1, nh)
        t = outtype if len(shape) == 2 else "f32"
        if t == "q8_0" and shape[-1] % 32:
            t = "f16"
        tensors.append((gname, list(reversed(shape)), GGML[t], encode(vals, t)))


def phi3_part(cfg, rs, hd, kvs, tensors):
    """Phi3MiniModel.set_gguf_parameters / generate_extra_tensors: the original context, the sliding
    window (0 when none), and for longrope (or its older name su) the attention factor computed from
    max_position_embeddings / original (as the converter does) and the two factor lists as F32
    tensors of rope.dimension_count / 2 entries."""
    ctx = cfg.get("max_position_embeddings", 4096)
    orig = rs.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings", ctx))
    kvs.append(kv_bytes("phi3.rope.scaling.original_context_length", T_U32, orig))
    kvs.append(kv_bytes("phi3.attention.sliding_window", T_U32, cfg.get("sliding_window") or 0))
    long_f, short_f = rs.get("long_factor"), rs.get("short_factor")
    if not long_f:
        return
    kind = rs.get("rope_type", rs.get("type", "")).lower()
    if kind not in ("su", "longrope"):
        raise SystemExit(f"gguf_write: phi3 rope scaling {kind!r} not supported")
    scale = ctx / orig
    attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    kvs.append(kv_bytes("phi3.rope.scaling.attn_factor", T_F32, attn))
    if not short_f or len(long_f) != len(short_f) or len(long_f) != hd // 2:
        raise SystemExit(f"gguf_write: phi3 long/short factors must have {hd // 2} entries each")
    for name, f in (("rope_factors_long.weight", long_f), ("rope_factors_short.weight", short_f)):
        tensors.append((name, [len(f)], GGML["f32"], struct.pack(f"<{len(f)}f", *f)))


def tokenizer_part(path, kvs, have_arch):
    j = json.load(open(path, encoding="utf-8"))
    m = j["model"]
    if m.get("type", "BPE") != "BPE":
        raise SystemExit("gguf_write: only BPE tokenizers")
    vocab = dict(m["vocab"])
    added = {a["id"]: a for a in j.get("added_tokens", [])}
    n = max(list(vocab.values()) + list(added)) + 1
    toks = [f"[PAD{i}]" for i in range(n)]
    for s, i in vocab.items():
        toks[i] = s
    types = [1] * n
    for i, a in added.items():
        toks[i] = a["content"]
        types[i] = 3 if a.get("special") else 4
    pre = json.dumps(j.get("pre_tokenizer"))
    byte_level = '"ByteLevel"' in pre
    merges = [x if isinstance(x, str) else " ".join(x) for x in m.get("merges", [])]
    if not have_arch:
        kvs.append(kv_bytes("general.architecture", T_STR, "llama"))
    cfgp = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    tc = json.load(open(cfgp)) if os.path.exists(cfgp) else {}

    def tok_id(key):
        v = tc.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return toks.index(v) if isinstance(v, str) and v in toks else None

    if byte_level:
        regex = json.loads(pre)
        pat = None
        for p in (regex.get("pretokenizers") or [regex]):
            if p.get("type") == "Split":
                pat = p["pattern"].get("Regex")
        prename = {LLAMA3_RE: "llama-bpe", QWEN2_RE: "qwen2", None: "default"}.get(pat)
        if prename is None:
            raise SystemExit("gguf_write: unknown pre-tokenizer pattern")
        kvs += [kv_bytes("tokenizer.ggml.model", T_STR, "gpt2"), kv_bytes("tokenizer.ggml.pre", T_STR, prename),
                kv_bytes("tokenizer.ggml.tokens", T_ARR, toks, T_STR),
                kv_bytes("tokenizer.ggml.token_type", T_ARR, types, T_I32),
                kv_bytes("tokenizer.ggml.merges", T_ARR, merges, T_STR)]
        add_bos = tc.get("add_bos_token", tok_id("bos_token") is not None)
    else:
        # SentencePiece BPE: llama.cpp merges by score of the merged piece, so a piece made by merge r
        # gets score -r (earlier merge, higher score); pieces no merge makes rank below all merges.
        first = {}
        for r, mg in enumerate(merges):
            a, b = mg.split(" ")
            first.setdefault(a + b, r)
        scores = [float(-first[t]) if t in first else float(-len(merges) - i) for i, t in enumerate(toks)]
        for i, t in enumerate(toks):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = 6
        unk = m.get("unk_token")
        if unk in vocab:
            types[vocab[unk]] = 2
        kvs += [kv_bytes("tokenizer.ggml.model", T_STR, "llama"),
                kv_bytes("tokenizer.ggml.tokens", T_ARR, toks, T_STR),
                kv_bytes("tokenizer.ggml.scores", T_ARR, scores, T_F32),
                kv_bytes("tokenizer.ggml.token_type", T_ARR, types, T_I32),
                kv_bytes("tokenizer.ggml.add_space_prefix", T_BOOL, True)]
        add_bos = tc.get("add_bos_token", True)
    for key, name in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        i = tok_id(key)
        if i is not None:
            kvs.append(kv_bytes(name, T_U32, i))
    kvs.append(kv_bytes("tokenizer.ggml.add_bos_token", T_BOOL, bool(add_bos)))


def write(out, kvs, tensors):
    hdr = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    infos, off = b"", 0
    offs = []
    for name, ne, ty, data in tensors:
        offs.append(off)
        infos += s_bytes(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
        infos += struct.pack("<IQ", ty, off)
        off += (len(data) + ALIGN - 1) // ALIGN * ALIGN
    body = hdr + infos
    body += b"\0" * ((-len(body)) % ALIGN)
    with open(out + ".tmp", "wb") as f:
        f.write(body)
        for (name, ne, ty, data), o in zip(tensors, offs):
            f.write(data)
            f.write(b"\0" * ((-len(data)) % ALIGN))
    os.replace(out + ".tmp", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokenizer-json")
    ap.add_argument("--outtype", default="f32", choices=sorted(GGML))
    ap.add_argument("out")
    a = ap.parse_args()
    if not a.model and not a.tokenizer_json:
        ap.error("give --model and/or --tokenizer-json")
    kvs, tensors = [], []
    if a.model:
        model_part(a.model, a.outtype, kvs, tensors)
    if a.tokenizer_json:
        tokenizer_part(a.tokenizer_json, kvs, bool(a.model))
    write(a.out, kvs, tensors)
    print(f"gguf_write: {a.out}: {len(kvs)} metadata, {len(tensors)} tensors")


if __name__ == "__main__":
    sys.exit(main())
