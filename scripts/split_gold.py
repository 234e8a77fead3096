#!/usr/bin/env python3
"""Train/dev splits of the gold evaluation sets that ship without a training split, for
`bert finetune` and scripts/finetune_pytorch.py (configs/finetune/{squad,copa}.toml).

Reads the shared gold data (default: ../shared/data beside the checkout; $BERT_SHARED_DATA or
--shared overrides) and writes into data/gold/ (gitignored; these files must not be committed):

  squad-train.json / squad-dev.json   SQuAD v1.1 dev, split by article: the first half of the
                                      articles (24 of 48) -> train, the rest -> dev; same JSON
                                      layout ({"data": [...], "version": "1.1"})
  copa-train.xml / copa-dev.xml       Balanced-COPA dev (balanced-copa-dev-all.xml): items 1-500 in
                                      file order -> train, 501-1000 -> dev. The file interleaves
                                      each original item with its mirror (1, 1001, 2, 1002, ...),
                                      so both halves are balanced and no mirror pair is split.
                                      Same XML (the items' text is copied verbatim)
  csqa-train.jsonl / csqa-dev.jsonl   CommonsenseQA validation (HF dump): the first 900 lines ->
                                      train, the rest (321) -> dev

Usage: python3 scripts/split_gold.py [--shared DIR] [--out data/gold]
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOURCES = {
    "squad/dev-v1.1.json": "SQuAD v1.1 dev set: https://rajpurkar.github.io/SQuAD-explorer/ (dev-v1.1.json)",
    "multiple_choice/copa/balanced-copa-dev-all.xml": "Balanced-COPA: https://github.com/Balanced-COPA/Balanced-COPA (data/balanced-copa-dev-all.xml)",
    "multiple_choice/csqa/dev_rand_split.hf-format.jsonl": "CommonsenseQA: https://www.tau-nlp.org/commonsenseqa or the Hugging Face dataset tau/commonsense_qa (validation split, one JSON object per line)",
}

CSQA_TRAIN = 900


def need(shared: Path, rel: str) -> Path:
    path = shared / rel
    if not path.is_file():
        sys.exit(
            f"error: {path} not found.\n"
            f"The gold data is expected under {shared} (set $BERT_SHARED_DATA or --shared to its directory).\n"
            f"Official source of this file: {SOURCES[rel]}"
        )
    return path


def split_squad(src: Path, out: Path):
    d = json.loads(src.read_text(encoding="utf-8"))
    articles = d["data"]
    half = len(articles) // 2
    counts = []
    for name, part in (("squad-train.json", articles[:half]), ("squad-dev.json", articles[half:])):
        (out / name).write_text(json.dumps({"data": part, "version": d.get("version", "1.1")}, ensure_ascii=False), encoding="utf-8")
        questions = sum(len(p["qas"]) for a in part for p in a["paragraphs"])
        counts.append(f"{name}: {len(part)} articles, {questions} questions")
    return counts


def split_copa(src: Path, out: Path):
    text = src.read_text(encoding="utf-8")
    items = list(re.finditer(r"[ \t]*<item\b.*?</item>[ \t]*\n?", text, flags=re.S))
    if len(items) != 1000:
        sys.exit(f"error: {src}: expected 1000 <item>s, found {len(items)}")
    head = text[: items[0].start()]
    tail = text[items[-1].end():]
    counts = []
    for name, part in (("copa-train.xml", items[:500]), ("copa-dev.xml", items[500:])):
        body = "\n".join(m.group(0).rstrip("\n") + "\n" for m in part)
        (out / name).write_text(head + body + tail, encoding="utf-8")
        ids = [re.search(r'id="(\d+)"', m.group(0)).group(1) for m in part]
        counts.append(f"{name}: {len(part)} items (ids {min(map(int, ids))}-{max(int(i) for i in ids if int(i) <= 1000)} and their mirrors)")
    return counts


def split_csqa(src: Path, out: Path):
    lines = [l for l in src.read_text(encoding="utf-8").splitlines() if l.strip()]
    counts = []
    for name, part in (("csqa-train.jsonl", lines[:CSQA_TRAIN]), ("csqa-dev.jsonl", lines[CSQA_TRAIN:])):
        (out / name).write_text("".join(l + "\n" for l in part), encoding="utf-8")
        counts.append(f"{name}: {len(part)} questions")
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("BERT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "data" / "gold"))
    args = ap.parse_args()
    shared = Path(args.shared)
    srcs = {rel: need(shared, rel) for rel in SOURCES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = split_squad(srcs["squad/dev-v1.1.json"], out)
    counts += split_copa(srcs["multiple_choice/copa/balanced-copa-dev-all.xml"], out)
    counts += split_csqa(srcs["multiple_choice/csqa/dev_rand_split.hf-format.jsonl"], out)
    for c in counts:
        print(f"{out}/{c}")


if __name__ == "__main__":
    main()
