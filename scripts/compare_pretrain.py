#!/usr/bin/env python3
"""Side-by-side eval metrics of two pretraining runs: ours (`bert pretrain`) and the transformers
run of the same batches (scripts/pretrain_pytorch.py).

Usage: python3 scripts/compare_pretrain.py OURS_DIR PYTORCH_DIR
e.g.   python3 scripts/compare_pretrain.py runs/tiny-cpu runs/tiny-cpu-pytorch

Reads DIR/metrics.jsonl of both (the last line of a split and step wins, as a resumed run
appends), prints eval mlm_loss / mlm_accuracy / nsp_accuracy per eval step, the final eval values
with their differences (pytorch - ours), the median train tokens/s, and the unigram baseline
accuracy from a summary.json when one of the folders has it.
"""
import argparse
import json
import statistics
from pathlib import Path

COLUMNS = ("mlm_loss", "mlm_accuracy", "nsp_accuracy")
FINAL = ("loss", "mlm_loss", "perplexity", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


def read_metrics(folder):
    """{split: {step: line}} from folder/metrics.jsonl."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found")
    runs = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.strip():
            try:
                line = json.loads(text)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{number}: {e}")
            runs.setdefault(line["split"], {})[line["step"]] = line
    return runs


def fmt(value):
    return "-" if value is None else f"{value:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", type=Path, help="output dir of `bert pretrain`")
    ap.add_argument("pytorch", type=Path, help="output dir of scripts/pretrain_pytorch.py")
    args = ap.parse_args()
    ours, theirs = read_metrics(args.ours), read_metrics(args.pytorch)
    ours_eval, theirs_eval = ours.get("eval", {}), theirs.get("eval", {})
    if not ours_eval or not theirs_eval:
        raise SystemExit("no eval lines in " + " and ".join(str(d) for d, e in ((args.ours, ours_eval), (args.pytorch, theirs_eval)) if not e))

    header = f"{'step':>6} " + " ".join(f"{c + ' ' + side:>20}" for c in COLUMNS for side in ("ours", "pytorch"))
    print(header)
    print("-" * len(header))
    for step in sorted(ours_eval.keys() | theirs_eval.keys()):
        a, b = ours_eval.get(step, {}), theirs_eval.get(step, {})
        print(f"{step:>6} " + " ".join(f"{fmt(line.get(c)):>20}" for c in COLUMNS for line in (a, b)))

    a, b = ours_eval[max(ours_eval)], theirs_eval[max(theirs_eval)]
    print(f"\nfinal eval (ours step {a['step']}, pytorch step {b['step']}):")
    print(f"{'':>14} {'ours':>10} {'pytorch':>10} {'difference':>11}")
    for key in FINAL:
        if key in a or key in b:
            diff = b[key] - a[key] if key in a and key in b else None
            print(f"{key:>14} {fmt(a.get(key)):>10} {fmt(b.get(key)):>10} {'-' if diff is None else f'{diff:+.4f}':>11}")

    speeds = [
        f"{name} {statistics.median(l['tokens_per_second'] for l in run['train'].values()):.0f}"
        for name, run in (("ours", ours), ("pytorch", theirs))
        if any("tokens_per_second" in l for l in run.get("train", {}).values())
    ]
    if speeds:
        print("\nmedian train tokens/s: " + ", ".join(speeds))
    for folder in (args.pytorch, args.ours):
        summary = folder / "summary.json"
        if summary.is_file():
            baseline = json.loads(summary.read_text()).get("unigram_baseline_accuracy")
            if baseline is not None:
                print(f"unigram baseline mlm_accuracy (most frequent train masked token, {summary}): {baseline:.4f}")
                break


if __name__ == "__main__":
    main()
