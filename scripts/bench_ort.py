#!/usr/bin/env python3
"""ONNX Runtime baseline for `bert bench encode`: the encode workload of scripts/bench_pytorch.py
(sentence-transformers) on ONNX Runtime's CPU execution provider, printing the same JSON schema
("framework": "onnxruntime") as the last stdout line, after a short human-readable table.

The model directory's BertModel (transformers, eager attention unless --attention sdpa) is
exported once with torch.onnx.export (the default, dynamo-based exporter; batch and sequence
axes dynamic; inputs input_ids, attention_mask, token_type_ids; output last_hidden_state) to
.cache/onnx/<model>-<attention>.onnx, re-exported when the weights or the torch/transformers
versions change. The session: GraphOptimizationLevel.ORT_ENABLE_ALL, intra_op_num_threads =
--threads, inter_op_num_threads = 1, sequential execution.

The work is sentence-transformers' encode: sentences sorted by length (characters, longest
first), batches of --batch-size tokenized with the model's fast tokenizer (truncation
longest_first to --seq-len tokens, padding to the longest of the batch), last_hidden_state
mean-pooled over the real tokens, L2-normalised, tokenization included in the time; the whole
encode timed 3 times after a warm-up, as scripts/bench_pytorch.py encode.

Before timing, the run checks its first batch against sentence-transformers (token ids equal,
embeddings within --tolerance, max abs) and fails otherwise. The export and the reference run
in a child process, so torch is never loaded in this one and its peak RSS (VmHWM) is ONNX
Runtime's, the tokenizer's and numpy's.

Usage:
  python3 scripts/bench_ort.py --model .cache/models/all-MiniLM-L6-v2 [--batch-size 32]
      [--seq-len 128] [--input tests/fixtures/corpus/moby.txt] [--sentences 512]
      [--warmup-batches 2] [--threads N] [--attention eager|sdpa] [--onnx PATH] [--tolerance 1e-4]

Needs onnxruntime, numpy and tokenizers here; torch, transformers, sentence-transformers, onnx
and onnxscript for the export and the check (in the child). Models load from local directories
only.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402  (after the environment above)
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from bench_common import (  # noqa: E402  (scripts/, beside this file)
    add_encode_arguments,
    cpu_name,
    positive,
    read_sentences,
    report_encode,
    time_encode,
)

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT = "last_hidden_state"


def export_key(model_dir, attention):
    """What the cached export was made from: a mismatch re-exports."""
    import torch
    import transformers

    weights = sorted(p for p in Path(model_dir).iterdir()
                     if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return {
        "model": str(Path(model_dir).resolve()),
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
        "attention": attention,
        # Plain strings: torch's TorchVersion would import torch where the key is unpickled.
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
    }


def export_and_reference(*args):
    """In the child process, its prints on stderr (stdout ends with the JSON line)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _export_and_reference(*args)


def _export_and_reference(model_dir, onnx_path, attention, texts, seq_len, threads):
    """Exports the model to `onnx_path` unless the cache is current; returns the export's facts
    with sentence-transformers' embeddings and transformers' token ids of `texts` (one batch)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(threads)
    onnx_path = Path(onnx_path)
    meta_path = onnx_path.with_suffix(".json")
    key = export_key(model_dir, attention)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and onnx_path.exists() else None
    if meta is None or meta.get("key") != key:
        import onnx

        class Encoder(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        bert = BertModel.from_pretrained(model_dir, attn_implementation=attention, add_pooling_layer=False)
        encoder = Encoder(bert).eval()
        # An example batch with padding in it (the shapes are dynamic: any batch and length).
        ids = torch.full((2, 16), 1000, dtype=torch.long)
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, 10:] = 0
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = {name: {0: batch, 1: sequence} for name in INPUTS}
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        partial = onnx_path.with_name(onnx_path.name + ".partial")
        with torch.no_grad():
            torch.onnx.export(encoder, (ids, mask, torch.zeros_like(ids)), str(partial), dynamo=True,
                              input_names=INPUTS, output_names=[OUTPUT], dynamic_shapes=shapes,
                              external_data=False)
        proto = onnx.load(str(partial), load_external_data=False)
        meta = {
            "key": key,
            "exporter": "torch.onnx.export (dynamo)",
            "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "onnx_nodes": len(proto.graph.node),
        }
        os.replace(partial, onnx_path)
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")

    st = SentenceTransformer(model_dir, device="cpu")
    st.max_seq_length = seq_len
    reference = st.encode(texts, batch_size=len(texts), show_progress_bar=False, convert_to_numpy=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(texts, padding=True, truncation="longest_first", max_length=seq_len)["input_ids"]
    return meta, np.asarray(reference, dtype=np.float32), ids


def load_tokenizer(model_dir, seq_len):
    """The fast tokenizer as transformers sets it up for tokenizer(..., padding=True,
    truncation="longest_first", max_length=seq_len): tokenizer.json's fixed-length padding
    replaced by padding to the batch's longest."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token", "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token))
    tokenizer.enable_truncation(max_length=seq_len, strategy="longest_first", direction="right")
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_type_id=padding.get("pad_type_id", 0),
                             pad_token=pad_token)
    return tokenizer


def make_encoder(session, tokenizer, batch_size):
    """encode(texts) -> (n, hidden) float32, as SentenceTransformer.encode: length-sorted
    batches, mean pooling over the real tokens, L2 normalisation, the input order kept."""
    names = {i.name for i in session.get_inputs()}

    def encode(texts):
        order = np.argsort([-len(t) for t in texts])  # sentence-transformers' order
        out = None
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            encodings = tokenizer.encode_batch([texts[i] for i in idx])
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            hidden = session.run([OUTPUT], {k: v for k, v in feed.items() if k in names})[0]
            mask = feed["attention_mask"][:, :, None].astype(hidden.dtype)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        return out

    return encode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encode_arguments(ap)
    ap.add_argument("--threads", type=positive, default=len(os.sched_getaffinity(0)),
                    help="intra_op_num_threads (default: the CPUs this process may use)")
    ap.add_argument("--attention", choices=["eager", "sdpa"], default="eager",
                    help="transformers' attention implementation to export (default eager: a "
                         "plainer graph, faster on ONNX Runtime than the exported SDPA)")
    ap.add_argument("--onnx", type=Path, help="the exported model (default .cache/onnx/<model>-<attention>.onnx)")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="max abs difference allowed against sentence-transformers on the first batch")
    args = ap.parse_args()
    model_dir = Path(args.model)
    if not (model_dir / "tokenizer.json").is_file():
        raise SystemExit(f"{model_dir}: no tokenizer.json (a local sentence-transformers directory is needed)")
    onnx_path = args.onnx or ROOT / ".cache" / "onnx" / f"{model_dir.resolve().name}-{args.attention}.onnx"

    sentences = read_sentences(args.input, args.sentences)
    first = [sentences[i] for i in np.argsort([-len(t) for t in sentences])[: args.batch_size]]
    # Export and reference in a child: torch stays out of this process.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        meta, reference, reference_ids = pool.apply(
            export_and_reference, (str(model_dir), str(onnx_path), args.attention, first, args.seq_len, args.threads))
    if "torch" in sys.modules:
        print("warning: torch got imported here: the peak RSS includes it", file=sys.stderr)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(model_dir, args.seq_len)
    encode = make_encoder(session, tokenizer, args.batch_size)

    ids = [e.ids for e in tokenizer.encode_batch(first)]
    if ids != reference_ids:
        bad = next(i for i, (a, b) in enumerate(zip(ids, reference_ids)) if a != b)
        raise SystemExit(f"token ids differ from transformers' tokenizer on {first[bad]!r}:\n"
                         f"  tokenizers   {ids[bad]}\n  transformers {reference_ids[bad]}")
    max_abs = float(np.abs(encode(first) - reference).max())
    if not max_abs <= args.tolerance:
        raise SystemExit(f"onnxruntime embeddings differ from sentence-transformers' on the first batch: "
                         f"max abs {max_abs:.3g} > {args.tolerance:g}")
    print(f"first batch, {len(first)} sentences, against sentence-transformers: max abs {max_abs:.2e}")

    times = time_encode(encode, sentences, args)
    report_encode(args, times, framework="onnxruntime", backend="cpu", device=cpu_name(), threads=args.threads,
                  extra={
                      "onnxruntime_version": ort.__version__,
                      "execution_provider": session.get_providers()[0],
                      "graph_optimization": "ORT_ENABLE_ALL",
                      "exporter": meta["exporter"],
                      "opset": meta["opset"],
                      "attention": args.attention,
                      "torch_version": meta["key"]["torch"],
                      "max_abs_diff_first_batch": max_abs,
                  })


if __name__ == "__main__":
    main()
