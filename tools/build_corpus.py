#!/usr/bin/env python3
"""build_corpus: rebuilds the English training text of the sample model (tools/train_sample.py) from
Debian packages, python stdlib only. Run on a Debian 12 machine with apt (root not needed for
`apt-get download`):

    python3 tools/build_corpus.py [--out .carry/corpus]

Sources (both free of copyright restrictions; see samples/README.md):
  bible-kjv-text 4.38 + bible-kjv 4.38  the King James Version (1611, public domain), dumped with the
                                        package's own `bible` program, one verse per line
  jargon-text 4.4.7-4.1                 the Jargon File 4.4.7 (placed in the public domain by its editor)

Output: OUT/corpus.txt (ASCII, paragraphs separated by blank lines) and OUT/corpus.sha256.
The text is normalised deterministically, so the same package versions give the same hash."""
import argparse
import gzip
import hashlib
import os
import re
import subprocess
import sys
import tempfile

PACKAGES = [("bible-kjv", "4.38"), ("bible-kjv-text", "4.38"), ("jargon-text", "4.4.7-4.1")]

# Unicode punctuation in the Jargon File mapped to ASCII; anything else non-ASCII is dropped.
UNI = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "--", "\u2013": "-",
       "\u2026": "...", "\u00a0": " ", "\u00e9": "e", "\u00e8": "e", "\u00e0": "a", "\u00f6": "o",
       "\u00fc": "u", "\u00e4": "a", "\u00e7": "c", "\u00ef": "i", "\u00f1": "n", "\u2022": "*"}


def fetch(tmp):
    """Download and unpack the pinned packages into tmp/root; refuses other versions."""
    root = os.path.join(tmp, "root")
    os.makedirs(root)
    names = ["%s=%s" % p for p in PACKAGES]
    subprocess.run(["apt-get", "download", "-q"] + names, cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    for f in sorted(os.listdir(tmp)):
        if f.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", f, root], cwd=tmp, check=True)
    return root


def ascii_text(s):
    out = []
    for ch in s:
        if ord(ch) < 128:
            out.append(ch)
        else:
            out.append(UNI.get(ch, ""))
    return "".join(out)


def kjv_text(root):
    """One verse per line, book/chapter headings kept as their own paragraphs."""
    exe = os.path.join(root, "usr/bin/bible")
    r = subprocess.run([exe, "-p", os.path.join(root, "usr/lib"), "-l100000", "gen1:1-rev22:21"],
                       stdin=subprocess.DEVNULL, capture_output=True, check=True)
    lines = []
    for ln in r.stdout.decode("ascii", "replace").splitlines():
        ln = ln.strip()
        m = re.match(r"^(\d+) (.*)$", ln)
        lines.append(m.group(2) if m else ln)
    return "\n".join(lines)


def jargon_text(root):
    """Reflow the Jargon File's indented, wrapped paragraphs into one line per paragraph."""
    path = os.path.join(root, "usr/share/doc/jargon-text/jargon.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = ascii_text(f.read())
    paras, cur = [], []
    for ln in raw.splitlines():
        ln = ln.strip()
        if not ln or set(ln) <= set("=-_*"):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        cur.append(ln)
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(re.sub(r"\s+", " ", p) for p in paras)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".carry/corpus")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch(tmp)
        kjv = kjv_text(root)
        jar = jargon_text(root)
    text = jar + "\n\n" + kjv + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    data = text.encode("ascii")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "corpus.txt"), "wb") as f:
        f.write(data)
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(a.out, "corpus.sha256"), "w") as f:
        f.write(h + "  corpus.txt\n")
    print("corpus: %d bytes (jargon %d, kjv %d) sha256 %s -> %s" %
          (len(data), len(jar), len(kjv), h, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
