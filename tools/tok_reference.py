#!/usr/bin/env python3
"""tok_reference: expected token ids for tests/test_tok.c, produced by the Hugging Face `tokenizers`
library (the reference implementation of tokenizer.json). Runs where `tokenizers` is installed (the
GPU machine; no network needed: the tokenizer.json files travel with the run). For each
tests/fixtures/tokenizers/NAME/tokenizer.json present it writes tests/fixtures/tok_expected_NAME.json:
  {"name", "tokenizers_version", "vocab_sha256", "cases": [{"text", "ids", "ids_special", "decoded"}]}
ids: encode(text, add_special_tokens=False); ids_special: with the post-processor; decoded:
decode(ids, skip_special_tokens=False).
Usage: python3 tools/tok_reference.py [FIXTURE_DIR] [OUT_DIR]   (--texts prints the text set as JSON)"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Multilingual text, code, emoji, odd whitespace, special-token strings, NFC/NFD pairs, contractions.
TEXTS = [
    "",
    "Hello world",
    " Hello world",
    "Hello  world   ",
    "Hello, world! How are you doing today?",
    "I'm sure they'll say it's fine; we've done what you'd ask. I'M SURE THEY'LL.",
    "don't DON'T Don'T 's 'S ſ'ſ",
    "The quick brown fox jumps over the lazy dog. 1234567890 3.14159 -42 1,000,000",
    "12 123 1234 12345 123456 1234567 99999999999999999999",
    "Ünïcödé äöü ß ÄÖÜ naïve café résumé coöperate",
    "Cafe\u0301 e\u0301 A\u030a \u1100\u1161\u11a8 \ud55c\uad6d\uc5b4",
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本测试：你好，世界！这是一个测试。",
    "한국어 텍스트 테스트입니다. 안녕하세요!",
    "Русский текст: Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Ελληνικά: Γειά σου Κόσμε. العربية: مرحبا بالعالم. עברית: שלום עולם.",
    "हिन्दी पाठ: नमस्ते दुनिया। ภาษาไทย: สวัสดีชาวโลก Tiếng Việt: Xin chào thế giới",
    "Emoji: 😀 😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🇯🇵 ❤️ ✨🚀🔥 🏳️‍🌈",
    "Tabs\tand\t\ttabs\n\nnewlines\r\nCRLF\rCR\x0bVT\x0cFF",
    "NBSP:\u00a0x\u00a0\u00a0y IDEOGRAPHIC:\u3000z EN\u2002EM\u2003THIN\u2009 LS\u2028PS\u2029 NEL\u0085end",
    "zero\u200bwidth\u200cjoin\u200dner\ufeffBOM soft\u00adhyphen",
    "    leading spaces and trailing spaces    ",
    "\n\n\nleading newlines",
    "trailing newlines\n\n\n",
    "   \n   \n\t\n  ",
    "a\n\nb\n \nc \n d",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b\\u00e9"}}',
    "<html><body class=\"x\"><p>Hi &amp; bye</p></body></html>",
    "for (int i=0;i<n;++i){x[i]+=y[i]*2;} // C-style comment /* block */",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "https://example.com/path?query=1&b=two#frag user@example.org",
    "!!!??? ... --- ___ *** ### $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "Mixed123Numbers456and789letters a1b2c3 x86_64 sm_90 v3.2.1",
    "<|begin_of_text|>Hello<|end_of_text|> <|eot_id|>",
    "<s>Hello</s> <s> </s>",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
    "ＦＵＬＬＷＩＤＴＨ １２３ ｶﾀｶﾅ ﬁ ligature ² ½ Ⅻ",
    "Math: ∀x∈ℝ, ∃y: x²+y²=z² ∑∫∂√∞ ≤≥≠≈ αβγδ",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex "
    "ea commodo consequat.",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "                                                                   many spaces",
    "\U0001F600\U0001F680\U0001F9E0 \U00020000\U0002A6D6 \U0001D400\U0001D7FF",
]


def main():
    if "--texts" in sys.argv:
        json.dump(TEXTS, sys.stdout, ensure_ascii=False, indent=1)
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fix = args[0] if args else os.path.join(ROOT, "tests", "fixtures", "tokenizers")
    out = args[1] if len(args) > 1 else os.path.join(ROOT, "tests", "fixtures")
    import tokenizers
    from tokenizers import Tokenizer
    names = sorted(d for d in os.listdir(fix) if os.path.isfile(os.path.join(fix, d, "tokenizer.json")))
    if not names:
        sys.exit(f"tok_reference: no NAME/tokenizer.json under {fix}")
    for name in names:
        path = os.path.join(fix, name, "tokenizer.json")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        tok = Tokenizer.from_file(path)
        cases = []
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_sp = tok.encode(text, add_special_tokens=True).ids
            cases.append({"text": text, "ids": ids, "ids_special": ids_sp,
                          "decoded": tok.decode(ids, skip_special_tokens=False)})
        doc = {"name": name, "tokenizers_version": tokenizers.__version__, "tokenizer_json_sha256": sha,
               "cases": cases}
        dst = os.path.join(out, f"tok_expected_{name}.json")
        with open(dst, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"tok_reference: {name}: {len(cases)} texts, {sum(len(c['ids']) for c in cases)} ids -> {dst}")


if __name__ == "__main__":
    main()
