"""What the encode baselines of `bert bench` share (scripts/bench_pytorch.py, scripts/bench_ort.py):
the sentences, the timing, the report and its JSON line (the schema of `bert bench encode --json`).
Imports nothing heavy (no torch), so that the ONNX Runtime process's peak RSS is its own."""
import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

ENCODE_REPEATS = 3
MAX_CHARS = 400


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib():
    """Peak resident set size (MiB) from /proc/self/status VmHWM, as `bert bench` reads it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def read_sentences(path, count):
    """The first `count` non-empty lines of `path` (each stripped and cut to MAX_CHARS
    characters), repeated as needed."""
    lines = [line.strip()[:MAX_CHARS] for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise SystemExit(f"{path}: no non-empty lines")
    return [lines[i % len(lines)] for i in range(count)]


def add_encode_arguments(p):
    """The encode workload's options (--model, --batch-size, --seq-len, --input, --sentences,
    --warmup-batches), the same for every baseline."""
    p.add_argument("--model", required=True, help="local sentence-transformers directory")
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--seq-len", type=positive, default=128, help="max_seq_length (longer inputs are cut)")
    p.add_argument("--input", default="tests/fixtures/corpus/moby.txt", help="a sentence per line")
    p.add_argument("--sentences", type=positive, default=512)
    p.add_argument("--warmup-batches", type=int, default=2)


def time_encode(encode, sentences, args, sync=lambda: None):
    """Runs `encode(texts)` once on the first `args.warmup_batches` batches (untimed), then
    ENCODE_REPEATS times on all of `sentences`; returns the times in ms."""
    if args.warmup_batches:
        encode(sentences[: args.warmup_batches * args.batch_size])
    times = []
    for _ in range(ENCODE_REPEATS):
        sync()
        start = time.perf_counter()
        encode(sentences)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def report_encode(args, times, *, framework, backend, device, threads, extra=None):
    """Prints the human-readable table, then the JSON line (last on stdout); returns the dict."""
    median_ms = statistics.median(times)
    result = {
        "workload": "encode",
        "framework": framework,
        "backend": backend,
        "device": device,
        "model": Path(args.model).resolve().name,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "sentences": args.sentences,
        "threads": threads,
        "time_ms": {"median": median_ms, "min": min(times), "max": max(times)},
        "sentences_per_second": args.sentences / (median_ms / 1000),
        "peak_rss_mib": peak_rss_mib(),
    }
    result.update(extra or {})
    print(f"{framework} encode {result['model']} on {result['device']}, {threads} threads")
    print(f"  {args.sentences} sentences from {args.input}, batch {args.batch_size}, max seq {args.seq_len}")
    print(f"  ms per encode   median {median_ms:.1f}  min {min(times):.1f}  max {max(times):.1f}  "
          f"({len(times)} runs)")
    print(f"  sentences/s {result['sentences_per_second']:.1f}  peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(json.dumps(result))
    return result
