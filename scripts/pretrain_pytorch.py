#!/usr/bin/env python3
"""The same pretraining run as `bert pretrain`, in Hugging Face transformers, on the exact
batches ours trained and evaluated on (needs torch + transformers + safetensors; CPU is fine).

First dump the batches of a run:

    bert data dump --config configs/pretrain/tiny-cpu.toml --output runs/tiny-cpu-batches.safetensors

then train on them:

    python3 scripts/pretrain_pytorch.py runs/tiny-cpu-batches.safetensors [--out runs/tiny-cpu-pytorch] [--threads N]

and compare: `python3 scripts/compare_pretrain.py runs/tiny-cpu runs/tiny-cpu-pytorch`.

The dump holds int32 `train.{input_ids,token_type_ids,attention_mask,mlm_labels}` [steps, batch, seq]
(pad 0, attention 0, label -100 = not masked), `train.next_sentence_labels` [steps, batch]
(0 = B follows A, 1 = random B; -1 when NSP is off), the same `eval.*` [eval_batches, batch, seq],
and metadata `config` (the resolved run TOML) and `bert_config` (the model's config.json).

The recipe mirrors ours: BertForPreTraining (BertForMaskedLM when NSP is off) from `bert_config`
with transformers' random init, seeded with [training].seed; torch AdamW with [optimizer]
(weight decay not on biases and LayerNorm, global-norm clipping with clip_grad_norm_); warmup
then linear/cosine/constant decay from [schedule] as transformers' schedulers, shifted by one
step as ours (step s = 0..steps-1 trains at lr_lambda(s + 1): no step at lr 0); one dumped batch per step, trimmed to its longest row, dropout
on. Loss = MLM cross-entropy averaged over the masked tokens + NSP cross-entropy, as
BertForPreTraining's, with the MLM head run on the masked positions only (as ours: the same
values, less work). Eval every [training].eval_every_steps and at the end on all dumped eval
batches (model.eval(), no grad): mlm_loss and nsp_loss averaged over batches, accuracies over all
masked tokens / pairs, perplexity = exp(mlm_loss).

Writes OUT/metrics.jsonl (train lines every [training].log_every_steps and eval lines, with the
names of ours) and OUT/summary.json (final eval, steps, seconds, and the accuracy on the eval
masked positions of always predicting the most frequent train masked token). OUT defaults to the
run's [output].dir + "-pytorch".
"""
import argparse
import json
import math
import time
import warnings
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, get_scheduler

FIELDS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_labels")
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def load_dump(path):
    """(train batches, eval batches or None, run config dict, BertConfig) from a batch dump."""
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    for key in ("config", "bert_config"):
        if key not in meta:
            raise SystemExit(f"{path}: no `{key}` in the safetensors metadata")
    tensors = load_file(path)

    def split(name):
        if f"{name}.input_ids" not in tensors:
            return None
        parts = {k: tensors[f"{name}.{k}"].long() for k in FIELDS}
        return [{k: v[i] for k, v in parts.items()} for i in range(parts["input_ids"].shape[0])]

    train = split("train")
    if not train:
        raise SystemExit(f"{path}: no train batches")
    return train, split("eval"), tomllib.loads(meta["config"]), BertConfig.from_dict(json.loads(meta["bert_config"]))


def trimmed(batch):
    """The batch without the padding columns beyond its longest row."""
    length = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :length] if v.dim() == 2 else v for k, v in batch.items()}


def forward(model, batch, nsp):
    """(loss tensor, stats) of one batch: BertForPreTraining's loss, the MLM head on masked positions only."""
    b = trimmed(batch)
    out = model.bert(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"])
    masked = b["mlm_labels"] >= 0
    targets = b["mlm_labels"][masked]
    logits = model.cls.predictions(out.last_hidden_state[masked])
    loss = mlm_loss = F.cross_entropy(logits, targets)
    stats = {
        "mlm_loss": mlm_loss.item(),
        "mlm_correct": int((logits.argmax(-1) == targets).sum()),
        "mlm_count": targets.numel(),
        "tokens": int(b["attention_mask"].sum()),
    }
    if nsp:
        nsp_logits = model.cls.seq_relationship(out.pooler_output)
        nsp_loss = F.cross_entropy(nsp_logits, b["next_sentence_labels"])
        loss = loss + nsp_loss
        stats.update(
            nsp_loss=nsp_loss.item(),
            nsp_correct=int((nsp_logits.argmax(-1) == b["next_sentence_labels"]).sum()),
            nsp_count=b["next_sentence_labels"].numel(),
        )
    return loss, stats


def metrics_line(split, step, s):
    """A metrics.jsonl object like ours (`stats_json` in crates/bert-train/src/pretrain.rs)."""
    line = {"split": split, "step": step, "epoch": 0, "loss": s["mlm_loss"] + s.get("nsp_loss", 0.0), "mlm_loss": s["mlm_loss"]}
    line["mlm_accuracy"] = s["mlm_correct"] / max(1, s["mlm_count"])
    line["perplexity"] = math.exp(s["mlm_loss"])
    if "nsp_loss" in s:
        line["nsp_loss"] = s["nsp_loss"]
        line["nsp_accuracy"] = s["nsp_correct"] / s["nsp_count"]
    return line


def evaluate(model, batches, nsp, step):
    """The eval line at `step`: losses averaged over batches, accuracies over all masked tokens / pairs."""
    model.eval()
    total = {}
    with torch.no_grad():
        for batch in batches:
            for k, v in forward(model, batch, nsp)[1].items():
                total[k] = total.get(k, 0) + v
    model.train()
    for k in ("mlm_loss", "nsp_loss"):
        if k in total:
            total[k] /= len(batches)
    return metrics_line("eval", step, total)


def unigram_baseline(train, evals):
    """Accuracy on the eval masked positions of always predicting the most frequent train masked token."""
    train_labels = torch.cat([b["mlm_labels"][b["mlm_labels"] >= 0] for b in train])
    eval_labels = torch.cat([b["mlm_labels"][b["mlm_labels"] >= 0] for b in evals])
    top = torch.bincount(train_labels).argmax()
    return (eval_labels == top).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("batches", type=Path, help="safetensors file written by `bert data dump`")
    ap.add_argument("--out", type=Path, help="output folder (default: the run's [output].dir + '-pytorch')")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train, evals, cfg, bert_config = load_dump(args.batches)
    opt, sched, training = cfg.get("optimizer", {}), cfg.get("schedule", {}), cfg.get("training", {})
    out = args.out or Path(cfg.get("output", {}).get("dir", "runs/pretrain") + "-pytorch")
    out.mkdir(parents=True, exist_ok=True)
    nsp = any(bool((b["next_sentence_labels"] != -1).any()) for b in train)
    largest_id = max(int(b["input_ids"].max()) for b in train + (evals or []))
    if largest_id >= bert_config.vocab_size:
        raise SystemExit(f"{args.batches}: token id {largest_id} is outside the model's vocabulary of {bert_config.vocab_size}")

    torch.manual_seed(training.get("seed", 42))
    model = (BertForPreTraining if nsp else BertForMaskedLM)(bert_config)
    model.train()
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.get("weight_decay", 0.01)}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.get("learning_rate", 1e-4),
        betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)),
        eps=opt.get("epsilon", 1e-6),
    )
    total = len(train)
    # round half away from zero, as Rust's f64::round in ours
    warmup = sched.get("warmup_steps", math.floor(sched.get("warmup_ratio", 0.0) * total + 0.5))
    decay_kind = sched.get("decay", "linear")
    if decay_kind not in SCHEDULERS:
        raise SystemExit(f"[schedule] decay = {decay_kind!r}: expected one of {', '.join(SCHEDULERS)}")
    scheduler = get_scheduler(SCHEDULERS[decay_kind], optim, num_warmup_steps=warmup, num_training_steps=total)
    with warnings.catch_warnings():
        # Ours trains step s at lr_lambda(s + 1): advance once before the first step.
        warnings.simplefilter("ignore")
        scheduler.step()
    max_norm = opt.get("max_grad_norm", 1.0)
    log_every = max(1, training.get("log_every_steps", 10))
    eval_every = training.get("eval_every_steps", 0)

    print(
        f"pretraining {bert_config.num_hidden_layers} layers × {bert_config.hidden_size} hidden "
        f"({sum(p.numel() for _, p in named) / 1e6:.1f}M parameters, {type(model).__name__}) on "
        f"{total} batches of {train[0]['input_ids'].shape[0]}, warmup {warmup}, {torch.get_num_threads()} threads",
        flush=True,
    )
    metrics = (out / "metrics.jsonl").open("w")
    final_eval = None
    started = window_start = time.time()
    window_tokens = 0
    for step, batch in enumerate(train, start=1):
        lr = scheduler.get_last_lr()[0]
        loss, stats = forward(model, batch, nsp)
        if not math.isfinite(loss.item()):
            raise SystemExit(f"loss is {loss.item()} at step {step - 1}: stopping")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf).item()
        optim.step()
        scheduler.step()
        optim.zero_grad()
        window_tokens += stats["tokens"]
        if step % log_every == 0 or step == total:
            line = metrics_line("train", step, stats)
            line.update(lr=lr, grad_norm=grad_norm, tokens_per_second=window_tokens / max(1e-9, time.time() - window_start))
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()
            print(
                f"step {step}/{total} loss {line['loss']:.4f} mlm_acc {line['mlm_accuracy']:.3f} "
                f"lr {lr:.2e} {line['tokens_per_second']:.0f} tok/s",
                flush=True,
            )
            window_tokens, window_start = 0, time.time()
        if evals and ((eval_every > 0 and step % eval_every == 0) or step == total):
            final_eval = evaluate(model, evals, nsp, step)
            metrics.write(json.dumps(final_eval) + "\n")
            metrics.flush()
            print(f"eval at step {step}: mlm_loss {final_eval['mlm_loss']:.4f}, mlm_accuracy {final_eval['mlm_accuracy']:.3f}", flush=True)
            window_start = time.time()
    metrics.close()

    summary = {
        "final_eval": final_eval,
        "steps": total,
        "seconds": round(time.time() - started, 1),
        "unigram_baseline_accuracy": unigram_baseline(train, evals) if evals else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
