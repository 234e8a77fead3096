#!/usr/bin/env python3
"""The same fine-tuning recipes as `bert finetune`, in Hugging Face transformers, for side-by-side
dev metrics (needs torch + transformers; CPU is fine).

Reads one of our TOML configs (configs/finetune/*.toml) and mirrors it for every task.kind:

  sequence-classification  BertForSequenceClassification (regression = true: one output, MSE);
                           TSV/CSV (header or columns by index) or JSONL; longest-first
                           truncation. eval.json: accuracy, f1 (macro), matthews, f1_positive
                           (2 classes) | pearson, spearman, mse
  token-classification     BertForTokenClassification; CoNLL (word ... tag per line, blank or
                           whitespace-only lines end a sentence, -DOCSTART- skipped) or JSONL
                           {"tokens", "tags"}; the tag on the first piece of each word (-100 on the
                           rest). eval.json: entity-level micro precision/recall/f1 (conlleval /
                           seqeval default semantics), word accuracy, per_type_f1
  question-answering       BertForQuestionAnswering; SQuAD v1.1 JSON; question + context windows
                           (doc_stride tokens of overlap), every window trained on, the first
                           answer's token span or [CLS] when the window does not hold all of it.
                           eval.json: exact_match, f1 (official SQuAD v1.1 normalisation, percent)
  multiple-choice          BertForMultipleChoice; COPA XML, CommonsenseQA JSONL (HF dump) or JSONL
                           {"context", "choices", "label"}; each choice as the pair (context,
                           choice), longest-first truncation. eval.json: accuracy

Common recipe: the encoder from model.init_from with a new head (torch.manual_seed(seed) first),
AdamW (betas, eps; weight decay not on biases/LayerNorm weights), global-norm clipping
(max_grad_norm; 0 = off), linear warmup (warmup_steps, else round(warmup_ratio * total) rounding
halves up) then linear/cosine/constant decay, total = epochs * ceil(n / batch_size) steps
(max_steps when epochs is not set), each epoch in the order random.Random(seed * 1000 + epoch)
shuffles, batches padded to their longest row, dropout on while training. The dev set is evaluated
once, at the end, in file order in batches of batch_size. task.max_train_examples /
max_valid_examples keep the first N examples (QA: the first N questions, windows made after).

Usage: python3 scripts/finetune_pytorch.py configs/finetune/wnut17.toml [--out DIR] [--set training.epochs=1 ...]
Writes OUT/eval.json (default OUT: output.dir + "-pytorch") with "steps" and "seconds" added.
"""
import argparse
import collections
import csv
import itertools
import json
import math
import random
import re
import string
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)

csv.field_size_limit(sys.maxsize)

# The keys `bert finetune` accepts (its parser rejects others): checked here too so that a config
# that runs here also runs there.
TASK_KEYS = {
    "kind", "train_file", "valid_file", "max_length", "labels", "max_train_examples", "max_valid_examples",
    "text_column", "text_pair_column", "label_column", "header", "regression",
    "doc_stride", "max_answer_length", "n_best",
}
SECTION_KEYS = {
    "optimizer": {"learning_rate", "weight_decay", "epsilon", "beta1", "beta2", "max_grad_norm"},
    "schedule": {"warmup_ratio", "warmup_steps", "decay"},
    "training": {
        "epochs", "max_steps", "batch_size", "seed", "gradient_accumulation_steps", "eval_every_steps", "eval_batches",
        "save_every_steps", "keep_checkpoints", "log_every_steps", "stop_after_steps", "backend",
    },
    "output": {"dir"},
}
KINDS = ("sequence-classification", "token-classification", "question-answering", "multiple-choice")


def load_config(path, sets):
    cfg = tomllib.loads(Path(path).read_text())
    for s in sets:  # --set a.b=value, the value read as TOML (3e-5, true, ["x"]) or a bare string
        key, _, raw = s.partition("=")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    unknown = [f"task.{k}" for k in cfg.get("task", {}) if k not in TASK_KEYS]
    for section, keys in SECTION_KEYS.items():
        unknown += [f"{section}.{k}" for k in cfg.get(section, {}) if k not in keys]
    if unknown:
        sys.exit(f"{path}: unknown config keys: {', '.join(unknown)}")
    if cfg["task"].get("kind") not in KINDS:
        sys.exit(f"{path}: task.kind must be one of {', '.join(KINDS)}")
    if cfg.get("training", {}).get("gradient_accumulation_steps", 1) != 1:
        sys.exit("gradient_accumulation_steps other than 1 is not mirrored here")
    return cfg


def first_n(items, task, key):
    n = task.get(key)
    return items if n is None else items[:n]


def pad_batch(rows, pad_id, extra=None, extra_pad=-100):
    """rows: (input_ids, token_type_ids) lists -> padded input_ids, token_type_ids, attention_mask
    (and `extra` per-token lists padded with extra_pad) as tensors."""
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows]),
        "token_type_ids": torch.tensor([tt + [0] * (width - len(tt)) for _, tt in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
    }
    if extra is not None:
        out["labels"] = torch.tensor([e + [extra_pad] * (width - len(e)) for e in extra])
    return out


# ---------------------------------------------------------------- sequence classification


def read_rows(path, task):
    path = str(path)
    text_col, pair_col, label_col = task.get("text_column", "text"), task.get("text_pair_column", "text_pair"), task.get("label_column", "label")
    if path.endswith((".jsonl", ".json", ".ndjson")):
        out = []
        for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
            if not line.strip():
                continue
            o = json.loads(line)
            s = lambda v: v if isinstance(v, str) or v is None else json.dumps(v)
            out.append((s(o[text_col]), s(o.get(pair_col)), s(o[label_col]).strip()))
        return out
    delim = "," if path.endswith(".csv") else "\t"
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delim, quoting=csv.QUOTE_MINIMAL if delim == "," else csv.QUOTE_NONE)
        rows = list(reader)
    if task.get("header", True):
        header, body = [h.strip() for h in rows[0]], rows[1:]
        col = {name: i for i, name in enumerate(header)}
    else:  # columns named by their 0-based index
        body = rows
        col = {str(i): i for i in range(max(len(r) for r in rows))}
    out = []
    for r in body:
        if not any(x.strip() for x in r):
            continue
        out.append((r[col[text_col]], r[col[pair_col]] if pair_col in col else None, r[col[label_col]].strip()))
    return out


def ranks(xs):
    """Average ranks (ties share the mean rank), for Spearman."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb) if va > 0 and vb > 0 else 0.0


class SequenceClassification:
    def __init__(self, cfg, tok):
        task = cfg["task"]
        self.tok, self.max_len = tok, task.get("max_length", 128)
        self.train_items = first_n(read_rows(task["train_file"], task), task, "max_train_examples")
        self.dev = first_n(read_rows(task["valid_file"], task), task, "max_valid_examples")
        self.regression = task.get("regression", False)
        self.labels = task.get("labels") or sorted({r[2] for r in self.train_items})

    def model(self, init):
        if self.regression:  # (id2label=None would unset num_labels in transformers 5)
            return BertForSequenceClassification.from_pretrained(init, num_labels=1, problem_type="regression")
        return BertForSequenceClassification.from_pretrained(
            init, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)), label2id={l: i for i, l in enumerate(self.labels)}
        )

    def collate(self, rows):
        a = [r[0] for r in rows]
        b = [r[1] for r in rows] if rows and rows[0][1] is not None else None
        enc = dict(self.tok(a, b, truncation="longest_first", max_length=self.max_len, padding=True, return_tensors="pt"))
        enc["labels"] = torch.tensor([float(r[2]) for r in rows]) if self.regression else torch.tensor([self.labels.index(r[2]) for r in rows])
        return enc

    def evaluate(self, model, bs):
        preds = []
        for i in range(0, len(self.dev), bs):
            enc = self.collate(self.dev[i:i + bs])
            enc.pop("labels")
            logits = model(**enc).logits
            preds.extend(logits[:, 0].tolist() if self.regression else logits.argmax(-1).tolist())
        if self.regression:
            gold = [float(r[2]) for r in self.dev]
            return {
                "pearson": pearson(preds, gold),
                "spearman": pearson(ranks(preds), ranks(gold)),
                "mse": sum((p - g) ** 2 for p, g in zip(preds, gold)) / len(gold),
                "examples": len(gold),
            }
        gold = [self.labels.index(r[2]) for r in self.dev]
        k = len(self.labels)
        conf = [[0] * k for _ in range(k)]  # conf[gold][pred]
        for p, g in zip(preds, gold):
            conf[g][p] += 1
        f1s = []
        for c in range(k):
            tp = conf[c][c]
            fp = sum(conf[g][c] for g in range(k)) - tp
            fn = sum(conf[c]) - tp
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        # Matthews correlation, multi-class form (Gorodkin).
        n = len(gold)
        t = [sum(conf[c]) for c in range(k)]
        p = [sum(conf[g][c] for g in range(k)) for c in range(k)]
        correct = sum(conf[c][c] for c in range(k))
        den = math.sqrt(n * n - sum(x * x for x in p)) * math.sqrt(n * n - sum(x * x for x in t))
        out = {
            "accuracy": correct / n,
            "f1": sum(f1s) / k,
            "matthews": (correct * n - sum(a * b for a, b in zip(t, p))) / den if den > 0 else 0.0,
            "examples": n,
        }
        if k == 2:
            out["f1_positive"] = f1s[1]
        return out


# ---------------------------------------------------------------- token classification


def read_tagged(path):
    """CoNLL (first and last whitespace-separated fields: word, tag) or JSONL {"tokens", "tags"}."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    out = []
    if path.suffix in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                o = json.loads(line)
                tags = o.get("tags") or []
                if tags and len(tags) != len(o["tokens"]):
                    sys.exit(f"{path}:{n}: {len(o['tokens'])} tokens but {len(tags)} tags")
                out.append((o["tokens"], tags))
    else:
        words, tags = [], []
        for n, line in enumerate(text.splitlines(), 1):
            fields = [f for f in re.split(r"[\t ]", line) if f]
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    out.append((words, tags))
                words, tags = [], []
                continue
            if len(fields) < 2:
                sys.exit(f"{path}:{n}: expected a word and a tag, got {line!r}")
            words.append(fields[0])
            tags.append(fields[-1])
        if words:
            out.append((words, tags))
    for _, tags in out:
        for t in tags:
            if not (t == "O" or t.startswith("B-") or t.startswith("I-")):
                sys.exit(f"{path}: tag {t!r} is not BIO (O, B-X, I-X)")
    return out


def tag_set(sentences):
    """O first, then by entity type, B before I."""
    return sorted({t for _, tags in sentences for t in tags}, key=lambda t: (t != "O", t[2:], t))


def entities(tags):
    """Chunks (type, first, last) of one IOB2 sentence with conlleval / seqeval default
    (non-strict) semantics: a chunk ends at O, at B-, or where the type changes; it starts at B-,
    and also at an I- that follows O or a chunk of another type."""
    out, start, typ = [], None, None
    for i, t in enumerate(list(tags) + ["O"]):
        prefix, ty = (t[0], t[2:]) if t != "O" else ("O", None)
        if start is not None and (prefix in ("O", "B") or ty != typ):
            out.append((typ, start, i - 1))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, typ = i, ty
    return out


def entity_prf(gold_seqs, pred_seqs):
    gold = {(s, *e) for s, tags in enumerate(gold_seqs) for e in entities(tags)}
    pred = {(s, *e) for s, tags in enumerate(pred_seqs) for e in entities(tags)}
    tp = len(gold & pred)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def per_type_f1(gold_seqs, pred_seqs):
    """Entity F1 of each type in the gold or predicted chunks."""
    out = {}
    types = {e[0] for seqs in (gold_seqs, pred_seqs) for tags in seqs for e in entities(tags)}
    for ty in sorted(types):
        keep = lambda seqs: [[t if t != "O" and t[2:] == ty else "O" for t in tags] for tags in seqs]
        out[ty] = entity_prf(keep(gold_seqs), keep(pred_seqs))[2]
    return out


class TokenClassification:
    def __init__(self, cfg, tok):
        task = cfg["task"]
        self.tok, self.pad = tok, tok.pad_token_id
        self.max_len = task.get("max_length", 128)
        train = first_n(read_tagged(task["train_file"]), task, "max_train_examples")
        self.dev = first_n(read_tagged(task["valid_file"]), task, "max_valid_examples")
        self.labels = task.get("labels") or tag_set(train)
        self.train_items = [self.encode(w, t) for w, t in train]
        self.dev_items = [self.encode(w, t) for w, t in self.dev]

    def encode(self, words, tags):
        enc = self.tok(words, is_split_into_words=True, truncation=True, max_length=self.max_len)
        word_ids = enc.word_ids()
        labels, prev = [], None
        for w in word_ids:
            if w is not None and w != prev:
                if tags[w] not in self.labels:
                    sys.exit(f"tag {tags[w]!r} is not in the label set {self.labels}")
                labels.append(self.labels.index(tags[w]))
            else:
                labels.append(-100)
            prev = w
        return enc["input_ids"], enc["token_type_ids"], labels, word_ids

    def model(self, init):
        return BertForTokenClassification.from_pretrained(
            init, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)), label2id={l: i for i, l in enumerate(self.labels)}
        )

    def collate(self, items):
        return pad_batch([(i[0], i[1]) for i in items], self.pad, [i[2] for i in items])

    def evaluate(self, model, bs):
        pred_seqs = []
        for i in range(0, len(self.dev_items), bs):
            items = self.dev_items[i:i + bs]
            enc = self.collate(items)
            enc.pop("labels")
            argmax = model(**enc).logits.argmax(-1).tolist()
            for item, row, (words, _) in zip(items, argmax, self.dev[i:i + bs]):
                # Each word: the prediction at its first piece; words without one (cut by
                # truncation, or no pieces at all) are "O".
                pred = [None] * len(words)
                for t, w in enumerate(item[3]):
                    if w is not None and pred[w] is None:
                        pred[w] = self.labels[row[t]]
                pred_seqs.append([p or "O" for p in pred])
        gold_seqs = [tags for _, tags in self.dev]
        p, r, f = entity_prf(gold_seqs, pred_seqs)
        words = sum(len(g) for g in gold_seqs)
        correct = sum(a == b for g, q in zip(gold_seqs, pred_seqs) for a, b in zip(g, q))
        self.predictions = pred_seqs
        return {"precision": p, "recall": r, "f1": f, "accuracy": correct / words, "per_type_f1": per_type_f1(gold_seqs, pred_seqs), "examples": len(gold_seqs)}


# ---------------------------------------------------------------- question answering


def read_squad(path):
    d = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    out = []
    for article in d["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append({
                    "id": qa["id"],
                    "question": qa["question"],
                    "context": para["context"],
                    "answers": [(a["text"], a["answer_start"]) for a in qa.get("answers", [])],
                    "is_impossible": qa.get("is_impossible", False),
                })
    return out


PUNCTUATION = set(string.punctuation)


def normalize_answer(s):
    """Official SQuAD v1.1: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction, truth):
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((collections.Counter(p) & collections.Counter(t)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


class QuestionAnswering:
    def __init__(self, cfg, tok):
        task = cfg["task"]
        self.tok, self.pad = tok, tok.pad_token_id
        self.max_len = task.get("max_length", 384)
        self.stride = task.get("doc_stride", 128)
        self.max_answer = task.get("max_answer_length", 30)
        self.n_best = task.get("n_best", 20)
        self.train_examples = first_n(read_squad(task["train_file"]), task, "max_train_examples")
        self.dev = first_n(read_squad(task["valid_file"]), task, "max_valid_examples")
        self.train_items = self.features(self.train_examples)
        self.dev_items = self.features(self.dev)
        print(f"QA windows: train {len(self.train_items)} for {len(self.train_examples)} questions, dev {len(self.dev_items)} for {len(self.dev)}", flush=True)

    def features(self, examples):
        feats = []
        for c in range(0, len(examples), 256):
            chunk = examples[c:c + 256]
            enc = self.tok(
                [e["question"] for e in chunk],
                [e["context"] for e in chunk],
                truncation="only_second",
                max_length=self.max_len,
                stride=self.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            for i, ids in enumerate(enc["input_ids"]):
                ex_index = c + enc["overflow_to_sample_mapping"][i]
                ex = examples[ex_index]
                seq = enc.sequence_ids(i)
                offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
                start = end = 0
                if ex["answers"] and not ex["is_impossible"]:
                    text, a_start = ex["answers"][0]
                    span = token_span(offsets, a_start, a_start + len(text))
                    if span:
                        start, end = span
                feats.append({"ids": ids, "types": enc["token_type_ids"][i], "example": ex_index, "offsets": offsets, "start": start, "end": end})
        return feats

    def model(self, init):
        return BertForQuestionAnswering.from_pretrained(init)

    def collate(self, items):
        b = pad_batch([(f["ids"], f["types"]) for f in items], self.pad)
        b["start_positions"] = torch.tensor([f["start"] for f in items])
        b["end_positions"] = torch.tensor([f["end"] for f in items])
        return b

    def evaluate(self, model, bs):
        best = {}  # example index -> (score, feature, start, end)
        for i in range(0, len(self.dev_items), bs):
            items = self.dev_items[i:i + bs]
            b = self.collate(items)
            b.pop("start_positions")
            b.pop("end_positions")
            out = model(**b)
            for f, sl, el in zip(items, out.start_logits.tolist(), out.end_logits.tolist()):
                n = len(f["ids"])
                span = best_span(sl[:n], el[:n], f["offsets"], self.n_best, self.max_answer)
                if span and (f["example"] not in best or span[0] > best[f["example"]][0]):
                    best[f["example"]] = (span[0], f, span[1], span[2])
        em = f1 = 0.0
        self.predictions = {}
        for k, ex in enumerate(self.dev):
            if k in best:
                _, f, s, e = best[k]
                pred = ex["context"][f["offsets"][s][0]:f["offsets"][e][1]]
            else:
                pred = ""
            self.predictions[ex["id"]] = pred
            golds = [a for a, _ in ex["answers"]]
            em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
            f1 += max(squad_f1(pred, g) for g in golds)
        n = len(self.dev)
        return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "examples": n}


def token_span(offsets, start, end):
    """Token span of the characters [start, end) when the window holds all of them (HF run_qa)."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or start < offsets[ctx[0]][0] or end > offsets[ctx[-1]][1]:
        return None
    s = max(i for i in ctx if offsets[i][0] <= start)  # last token starting at or before the start
    e = min(i for i in ctx if offsets[i][1] >= end)  # first token ending at or after the end
    return (s, e) if s <= e else None


def best_span(start_logits, end_logits, offsets, n_best, max_answer):
    """(score, start, end) of the best span over the n_best top start and end logits: both in the
    context, start <= end, at most max_answer tokens; the first of equal scores wins."""
    top = lambda xs: sorted(range(len(xs)), key=lambda i: -xs[i])[:n_best]
    best = None
    for s in top(start_logits):
        for e in top(end_logits):
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer:
                continue
            score = start_logits[s] + end_logits[e]
            if best is None or score > best[0]:
                best = (score, s, e)
    return best


# ---------------------------------------------------------------- multiple choice


def read_choices(path):
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    out = []
    if path.suffix == ".xml":  # COPA
        text = re.sub(r"<!DOCTYPE[^>]*>", "", text, count=1)
        for item in ET.fromstring(text).iter("item"):
            connector = {"cause": "What was the cause?", "effect": "What happened as a result?"}[item.get("asks-for")]
            label = item.get("most-plausible-alternative")
            out.append((f"{item.find('p').text.strip()} {connector}", [item.find("a1").text.strip(), item.find("a2").text.strip()], int(label) - 1 if label else None))
        return out
    for line in text.splitlines():
        if not line.strip():
            continue
        o = json.loads(line)
        if "question" in o and "answerKey" in o:  # CommonsenseQA (HF dump)
            key = o["answerKey"]
            out.append((o["question"], o["choices"]["text"], o["choices"]["label"].index(key) if key else None))
        else:
            out.append((o["context"], o["choices"], o.get("label")))
    return out


class MultipleChoice:
    def __init__(self, cfg, tok):
        task = cfg["task"]
        self.tok, self.pad = tok, tok.pad_token_id
        self.max_len = task.get("max_length", 128)
        self.train_items = [self.encode(e) for e in first_n(read_choices(task["train_file"]), task, "max_train_examples")]
        self.dev_items = [self.encode(e) for e in first_n(read_choices(task["valid_file"]), task, "max_valid_examples")]

    def encode(self, example):
        context, choices, label = example
        enc = self.tok([context] * len(choices), choices, truncation="longest_first", max_length=self.max_len)
        return list(zip(enc["input_ids"], enc["token_type_ids"])), label

    def model(self, init):
        return BertForMultipleChoice.from_pretrained(init)

    def collate(self, items):
        k = len(items[0][0])
        if any(len(rows) != k for rows, _ in items):
            sys.exit("examples in one batch have different numbers of choices")
        flat = pad_batch([r for rows, _ in items for r in rows], self.pad)  # choice-major per example
        b = {name: t.view(len(items), k, -1) for name, t in flat.items()}
        b["labels"] = torch.tensor([label for _, label in items])
        return b

    def evaluate(self, model, bs):
        correct = 0
        for i in range(0, len(self.dev_items), bs):
            items = self.dev_items[i:i + bs]
            b = self.collate(items)
            gold = b.pop("labels")
            correct += int((model(**b).logits.argmax(-1) == gold).sum())
        return {"accuracy": correct / len(self.dev_items), "examples": len(self.dev_items)}


# ---------------------------------------------------------------- training loop


def lr_factor(step, total, warmup, decay):
    """bert-train's lr_at(step) / peak: step is 0-based."""
    s = step + 1
    if s <= warmup:
        return s / max(1, warmup)
    progress = min(1.0, max(0.0, (s - warmup) / max(1, total - warmup)))
    if decay == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if decay == "constant":
        return 1.0
    return 1 - progress


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, as `bert finetune --set`")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    task, opt, sched, train = cfg["task"], cfg.get("optimizer", {}), cfg.get("schedule", {}), cfg.get("training", {})
    out = Path(args.out or (cfg["output"]["dir"] + "-pytorch"))
    out.mkdir(parents=True, exist_ok=True)
    seed = train.get("seed", 42)
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    init = cfg["model"]["init_from"]
    tok = AutoTokenizer.from_pretrained(init)
    kind = {
        "sequence-classification": SequenceClassification,
        "token-classification": TokenClassification,
        "question-answering": QuestionAnswering,
        "multiple-choice": MultipleChoice,
    }[task["kind"]]
    t = kind(cfg, tok)
    model = t.model(init)
    items = t.train_items

    bs = train.get("batch_size", 32)
    steps_per_epoch = math.ceil(len(items) / bs)
    total = train["epochs"] * steps_per_epoch if "epochs" in train else train.get("max_steps", 1000)
    warmup = sched["warmup_steps"] if "warmup_steps" in sched else math.floor(sched.get("warmup_ratio", 0.0) * total + 0.5)
    decay = sched.get("decay", "linear")
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": opt.get("weight_decay", 0.01)},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(groups, lr=opt.get("learning_rate", 1e-4), betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)), eps=opt.get("epsilon", 1e-6))
    sch = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, total, warmup, decay))
    clip = opt.get("max_grad_norm", 1.0)
    print(f"{task['kind']}: {len(items)} training rows, {total} steps of {bs} (warmup {warmup}), {init}", flush=True)
    start = time.time()
    model.train()
    step = 0
    for epoch in itertools.count():
        if step >= total:
            break
        order = list(range(len(items)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for i in range(0, len(order), bs):
            if step >= total:
                break
            batch = t.collate([items[j] for j in order[i:i + bs]])
            outp = model(**batch)
            outp.loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optim.step()
            sch.step()
            optim.zero_grad()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{total} loss {outp.loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        result = t.evaluate(model, bs)
    result.update({"steps": step, "seconds": round(time.time() - start, 1)})
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    if hasattr(t, "predictions"):
        (out / "predictions.json").write_text(json.dumps(t.predictions, ensure_ascii=False))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
