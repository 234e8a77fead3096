#!/usr/bin/env python3
"""The same sequence-classification recipe as `bert finetune`, in Hugging Face transformers,
for side-by-side dev metrics (needs torch + transformers; CPU is fine).

Reads one of our TOML configs (configs/finetune/*.toml) and mirrors it: BertForSequenceClassification
from model.init_from with a new classifier, AdamW (eps, weight decay 0.01 not on biases/LayerNorm,
global-norm clipping 1.0), linear warmup (warmup_ratio) then linear decay, epochs, batch size,
max_length (longest-first truncation), dynamic padding, a seeded shuffle per epoch.

Usage: python3 scripts/finetune_pytorch.py configs/finetune/rotten-tomatoes.toml [--out runs/rt-pytorch]
Writes OUT/eval.json like `bert finetune`.
"""
import argparse
import csv
import json
import math
import random
import sys
import time
import tomllib
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

csv.field_size_limit(sys.maxsize)


def read_rows(path, task):
    delim = "," if str(path).endswith(".csv") else "\t"
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_MINIMAL if delim == "," else csv.QUOTE_NONE)
        rows = list(reader)
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    pair = task.get("text_pair_column", "text_pair")
    out = []
    for r in body:
        if not any(x.strip() for x in r):
            continue
        out.append((r[col[task.get("text_column", "text")]], r[col[pair]] if pair in col else None, r[col[task.get("label_column", "label")]].strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--out")
    args = ap.parse_args()
    cfg = tomllib.loads(Path(args.config).read_text())
    task, opt, sched, train = cfg["task"], cfg.get("optimizer", {}), cfg.get("schedule", {}), cfg.get("training", {})
    out = Path(args.out or (cfg["output"]["dir"] + "-pytorch"))
    out.mkdir(parents=True, exist_ok=True)
    seed = train.get("seed", 42)
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_rows = read_rows(task["train_file"], task)
    dev_rows = read_rows(task["valid_file"], task)
    regression = task.get("regression", False)
    labels = task.get("labels") or sorted({r[2] for r in train_rows})
    tok = AutoTokenizer.from_pretrained(cfg["model"]["init_from"])
    model = BertForSequenceClassification.from_pretrained(
        cfg["model"]["init_from"],
        num_labels=1 if regression else len(labels),
        id2label=None if regression else dict(enumerate(labels)),
        label2id=None if regression else {l: i for i, l in enumerate(labels)},
    )
    max_len = task.get("max_length", 128)

    def encode(rows):
        a = [r[0] for r in rows]
        b = [r[1] for r in rows] if rows and rows[0][1] is not None else None
        enc = tok(a, b, truncation="longest_first", max_length=max_len, padding=True, return_tensors="pt")
        y = torch.tensor([float(r[2]) for r in rows]) if regression else torch.tensor([labels.index(r[2]) for r in rows])
        return enc, y

    bs = train.get("batch_size", 32)
    epochs = train.get("epochs", 1)
    steps_per_epoch = math.ceil(len(train_rows) / bs)
    total = epochs * steps_per_epoch
    warmup = sched.get("warmup_steps") or round(sched.get("warmup_ratio", 0.0) * total)
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": opt.get("weight_decay", 0.01)},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    lr = opt.get("learning_rate", 1e-4)
    optim = torch.optim.AdamW(groups, lr=lr, betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)), eps=opt.get("epsilon", 1e-6))
    sch = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / max(1, warmup) if s + 1 <= warmup else max(0.0, 1 - (s + 1 - warmup) / max(1, total - warmup))
    )
    start = time.time()
    model.train()
    step = 0
    for epoch in range(epochs):
        order = list(range(len(train_rows)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for i in range(0, len(order), bs):
            enc, y = encode([train_rows[j] for j in order[i:i + bs]])
            outp = model(**enc, labels=y)
            outp.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.get("max_grad_norm", 1.0))
            optim.step()
            sch.step()
            optim.zero_grad()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{total} loss {outp.loss.item():.4f}", flush=True)
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev_rows), bs):
            enc, _ = encode(dev_rows[i:i + bs])
            logits = model(**enc).logits
            preds.extend(logits[:, 0].tolist() if regression else logits.argmax(-1).tolist())
    if regression:
        gold = [float(r[2]) for r in dev_rows]
        result = {"pearson": float(torch.corrcoef(torch.tensor([preds, gold]))[0, 1])}
    else:
        gold = [labels.index(r[2]) for r in dev_rows]
        acc = sum(p == g for p, g in zip(preds, gold)) / len(gold)
        f1s = []
        for c in range(len(labels)):
            tp = sum(p == c and g == c for p, g in zip(preds, gold))
            fp = sum(p == c and g != c for p, g in zip(preds, gold))
            fn = sum(p != c and g == c for p, g in zip(preds, gold))
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        result = {"accuracy": acc, "f1": sum(f1s) / len(f1s)}
    result.update({"examples": len(dev_rows), "steps": step, "seconds": round(time.time() - start, 1)})
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
