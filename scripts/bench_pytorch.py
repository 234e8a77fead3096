#!/usr/bin/env python3
"""PyTorch baselines for `bert bench`: the same workloads in Hugging Face transformers and
sentence-transformers, printing the same JSON schema ("framework": "pytorch" or
"sentence-transformers") as the last stdout line, after a short human-readable table.

train: BertForPreTraining (BertForMaskedLM when data.next_sentence_prediction = false) built from
one of our pretraining TOML configs ([model] preset + BertConfig overrides, [data] max_seq_length
and mlm_probability, [training] batch_size and seed, [optimizer]); one synthetic batch from a fixed
seed ([CLS] A [SEP] B [SEP], no padding, round(mlm_probability * seq) [MASK]ed positions per row,
random NSP labels). A step is forward with labels, backward, global-norm clipping, AdamW
(decay not on biases/LayerNorm), zero_grad; each step after the warm-up is timed.

encode: SentenceTransformer(model_dir).encode over the first N non-empty lines of a text file
(each cut to 400 characters), tokenization, pooling and normalisation included; the whole encode
is timed 3 times after a warm-up.

Usage:
  python3 scripts/bench_pytorch.py train --config configs/bench/bert-mini.toml [--steps 20]
      [--warmup 3] [--device cpu|cuda] [--precision f32|bf16] [--attention eager|sdpa] [--threads N]
  python3 scripts/bench_pytorch.py encode --model .cache/models/all-MiniLM-L6-v2 [--batch-size 32]
      [--seq-len 128] [--input tests/fixtures/corpus/moby.txt] [--sentences 512]
      [--warmup-batches 2] [--device cpu|cuda] [--threads N]

Needs torch and transformers (train) or sentence-transformers (encode); models load from local
directories only.
"""
import argparse
import json
import os
import statistics
import time
import tomllib
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch  # noqa: E402  (after the environment above)
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining  # noqa: E402

from bench_common import (  # noqa: E402  (scripts/, beside this file)
    add_encode_arguments,
    cpu_name,
    peak_rss_mib,
    percentile,
    positive,
    read_sentences,
    report_encode,
    time_encode,
)

PRESETS = {  # name: (layers, hidden, heads), as BertConfig::preset in crates/bert-model
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
CLS, SEP, MASK, FIRST_ORDINARY_ID = 101, 102, 103, 5


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def setup(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bert_config(cfg, attention):
    model = dict(cfg.get("model", {}))
    if "init_from" in model:
        raise SystemExit("[model] init_from is not supported here: give a preset")
    preset = model.pop("preset", "base").removeprefix("bert-")
    model.pop("model_type", None)
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    layers, hidden, heads = PRESETS[preset]
    fields = dict(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    fields.update(model)
    return preset, BertConfig(**fields, attn_implementation=attention)


def synthetic_batch(batch, seq, vocab, mlm_probability, nsp, generator):
    """[CLS] A [SEP] B [SEP] with random ids (the middle [SEP] at seq // 2, segment 1 after it, as
    in `bert bench train`), no padding, exactly round(mlm_probability * seq) masked positions per
    row (never a special token)."""
    mid = seq // 2
    input_ids = torch.randint(FIRST_ORDINARY_ID, vocab, (batch, seq), generator=generator)
    input_ids[:, 0] = CLS
    input_ids[:, mid] = SEP
    input_ids[:, -1] = SEP
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[:, mid + 1 :] = 1
    special = torch.zeros(batch, seq, dtype=torch.bool)
    special[:, [0, mid, seq - 1]] = True
    scores = torch.rand(batch, seq, generator=generator).masked_fill(special, float("inf"))
    masked = scores.argsort(dim=1)[:, : round(mlm_probability * seq)]
    labels = torch.full((batch, seq), -100, dtype=torch.long)
    labels.scatter_(1, masked, input_ids.gather(1, masked))
    input_ids.scatter_(1, masked, MASK)
    out = dict(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=torch.ones(batch, seq, dtype=torch.long),
        labels=labels,
    )
    if nsp:
        out["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=generator)
    return out


def train_flops(config, batch, seq, predicted, nsp):
    """Matrix-product FLOPs of one pretraining step, forward and backward (three times the
    forward): the formula of ours (`bert_train::commands::bench_train::train_flops`). Per token
    and layer 2(4H^2 + 2HI) for the projections and feed-forward plus 4TH for the attention
    scores and context; 2(H^2 + HV) per position the MLM head predicts; 2(H^2 + 2H) per
    sequence for the pooler and NSP head."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    encoder = batch * seq * config.num_hidden_layers * (2 * (4 * h * h + 2 * h * i) + 4 * seq * h)
    mlm = predicted * 2 * (h * h + h * v)
    pooler = batch * 2 * (h * h + 2 * h) if nsp else 0
    return 3 * (encoder + mlm + pooler)


def masked_only_loss(model, batch, nsp):
    """The loss of BertForPreTraining/BertForMaskedLM with the MLM head run on the masked
    positions only (what ours does): the same value, ~2.4x less work at bert-mini seq 128."""
    out = model.bert(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
    )
    labels = batch["labels"]
    picked = labels >= 0
    predictions = model.cls.predictions(out.last_hidden_state[picked])
    loss = torch.nn.functional.cross_entropy(predictions, labels[picked])
    if nsp:
        loss = loss + torch.nn.functional.cross_entropy(
            model.cls.seq_relationship(out.pooler_output), batch["next_sentence_label"]
        )
    return loss


def train(args):
    device = setup(args)
    cfg = tomllib.loads(Path(args.config).read_text())
    data, training, opt = cfg.get("data", {}), cfg.get("training", {}), cfg.get("optimizer", {})
    seq = data.get("max_seq_length", 128)
    batch_size = training.get("batch_size", 32)
    nsp = data.get("next_sentence_prediction", True)
    torch.manual_seed(training.get("seed", 42))
    preset, config = bert_config(cfg, args.attention)
    model = (BertForPreTraining if nsp else BertForMaskedLM)(config).to(device).train()

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if "bias" in name or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": opt.get("weight_decay", 0.01)},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=opt.get("learning_rate", 1e-4),
        betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)),
        eps=opt.get("epsilon", 1e-6),
        fused=True,
    )
    max_grad_norm = opt.get("max_grad_norm", 1.0)
    generator = torch.Generator().manual_seed(training.get("seed", 42))
    mlm_probability = data.get("mlm_probability", 0.15)
    batch = synthetic_batch(batch_size, seq, config.vocab_size, mlm_probability, nsp, generator)
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else nullcontext()
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times, loss = [], None
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss = masked_only_loss(model, batch, nsp) if args.mlm_masked_only else model(**batch).loss
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)

    ordered = sorted(times)
    median_s = statistics.median(ordered) / 1000
    # The MLM head predicts the masked positions (same work as ours) or every position (as is).
    predicted = int((batch["labels"] >= 0).sum()) if args.mlm_masked_only else batch_size * seq
    flops = train_flops(config, batch_size, seq, predicted, nsp)
    achieved = flops / median_s / 1e12
    result = {
        "workload": "train",
        "framework": "pytorch",
        "backend": device.type,
        "device": device_name(device),
        "model": preset,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "batch_size": batch_size,
        "seq_len": seq,
        "precision": args.precision,
        "attention": args.attention,
        "mlm_head": "masked positions" if args.mlm_masked_only else "all positions",
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "step_time_ms": {
            "median": statistics.median(ordered),
            "mean": statistics.fmean(ordered),
            "min": ordered[0],
            "max": ordered[-1],
            "p10": percentile(ordered, 0.1),
            "p90": percentile(ordered, 0.9),
        },
        "tokens_per_second": batch_size * seq / median_s,
        "samples_per_second": batch_size / median_s,
        "peak_rss_mib": peak_rss_mib(),
        # What the caching allocator reserved (as ours reports CubeCL's pools), and what tensors used.
        "peak_device_mib": torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None,
        "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "model_tflops_per_step": flops / 1e12,
        "tflops_per_second": achieved,
        "peak_tflops": args.peak_tflops,
        "mfu": achieved / args.peak_tflops if args.peak_tflops else None,
        "final_loss": loss.item(),
    }
    t = result["step_time_ms"]
    print(f"pytorch train {preset} ({result['layers']}x{result['hidden']}) on {result['device']}, "
          f"{args.precision}, {args.attention}, {result['threads']} threads")
    print(f"  batch {batch_size} x seq {seq}, {args.steps} steps after {args.warmup} warm-up")
    print(f"  step ms   median {t['median']:.1f}  mean {t['mean']:.1f}  min {t['min']:.1f}  "
          f"max {t['max']:.1f}  p10 {t['p10']:.1f}  p90 {t['p90']:.1f}")
    device_mib = result["peak_device_mib"]
    print(f"  tokens/s {result['tokens_per_second']:.0f}  samples/s {result['samples_per_second']:.2f}  "
          f"final loss {result['final_loss']:.4f}  peak RSS {result['peak_rss_mib']:.0f} MiB"
          + (f"  peak device {device_mib:.0f} MiB" if device_mib is not None else "")
          + (f"  MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""))
    print(json.dumps(result))


def encode(args):
    from sentence_transformers import SentenceTransformer

    device = setup(args)
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.seq_len
    sentences = read_sentences(args.input, args.sentences)
    times = time_encode(
        lambda texts: model.encode(texts, batch_size=args.batch_size, show_progress_bar=False),
        sentences,
        args,
        sync=lambda: sync(device),
    )
    report_encode(args, times, framework="sentence-transformers", backend=device.type,
                  device=device_name(device), threads=torch.get_num_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="workload", required=True)

    def common(p):
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        p.add_argument("--threads", type=positive, help="torch.set_num_threads (default: torch's own choice)")

    t = sub.add_parser("train", help="pretraining steps (MLM + NSP) on a synthetic batch")
    t.add_argument("--config", required=True, help="our pretraining TOML config")
    t.add_argument("--steps", type=positive, default=20, help="timed steps")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    t.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    t.add_argument("--attention", choices=["eager", "sdpa"], default="sdpa")
    t.add_argument("--peak-tflops", type=float,
                   help="the device's peak TFLOP/s for the precision, to report MFU")
    t.add_argument(
        "--mlm-masked-only",
        action="store_true",
        help="run the MLM head on masked positions only, as ours (default: transformers as is)",
    )
    common(t)
    t.set_defaults(run=train)

    e = sub.add_parser("encode", help="sentence-transformers encode throughput")
    add_encode_arguments(e)
    common(e)
    e.set_defaults(run=encode)

    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
