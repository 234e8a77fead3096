#!/usr/bin/env python3
"""`bert serve` against offline `bert bench encode` on the same sentences: sentences/s through
`POST /embed` with --clients concurrent clients sending one sentence per request (the server
batches them), the p50/p99 latency of a single client, and the offline encode of the same
sentences (batch --batch-size, seq --seq-len), alternating offline and served --rounds times,
the best of each kept. The last line printed is `ratios: serve_vs_offline=X` (served / offline
sentences/s); the line before it, one JSON object with every figure.

The server runs with --max-input-length --seq-len and every request with "truncate": true, so
both sides cut the sentences to the same length; the clients use keep-alive connections (one
per client thread, Python's http.client). The clients share the machine with the server.

Usage:
  python3 scripts/bench_serve.py [--bert target/release/bert] [--model .cache/models/all-MiniLM-L6-v2]
      [--input tests/fixtures/corpus/moby.txt] [--sentences 512] [--clients 32] [--batch-size 32]
      [--seq-len 128] [--latency-requests 200] [--rounds 2] [--threads N]
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import percentile, read_sentences  # noqa: E402  (scripts/, beside this file)


def start_server(args, env):
    """`bert serve` on an ephemeral port: the process and its (host, port)."""
    server = subprocess.Popen(
        [args.bert, "serve", "--model", args.model, "--port", "0", "--backend", "cpu",
         "--max-input-length", str(args.seq_len)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in server.stdout:
        if line.startswith("listening on http://"):
            host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
            return server, (host, int(port))
    raise SystemExit(f"bert serve exited ({server.wait()}) before it listened")


def embed(connection, text):
    """One /embed request on `connection`; fails on a non-200 answer."""
    body = json.dumps({"inputs": text, "truncate": True})
    connection.request("POST", "/embed", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise SystemExit(f"/embed answered {response.status}: {data[:200]!r}")
    return data


def served(address, sentences, clients):
    """Seconds to embed every sentence through `clients` concurrent clients."""
    lock = threading.Lock()
    next_index = [0]

    def client():
        connection = http.client.HTTPConnection(*address, timeout=300)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(sentences):
                break
            embed(connection, sentences[i])
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def latency(address, sentences, requests):
    """One client, one request at a time: each request's time in ms."""
    connection = http.client.HTTPConnection(*address, timeout=300)
    times = []
    for i in range(requests):
        start = time.perf_counter()
        embed(connection, sentences[i % len(sentences)])
        times.append((time.perf_counter() - start) * 1000)
    connection.close()
    return times


def offline(args, env):
    """`bert bench encode` of the same sentences: its JSON line."""
    out = subprocess.run(
        [args.bert, "bench", "encode", "--model", args.model, "--batch-size", str(args.batch_size),
         "--seq-len", str(args.seq_len), "--input", args.input, "--sentences", str(args.sentences),
         "--backend", "cpu", "--json"],
        check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bert", default="target/release/bert")
    p.add_argument("--model", default=".cache/models/all-MiniLM-L6-v2")
    p.add_argument("--input", default="tests/fixtures/corpus/moby.txt")
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--latency-requests", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    sentences = read_sentences(args.input, args.sentences)

    best_offline, best_served, latencies = 0.0, 0.0, []
    for round_ in range(args.rounds):
        result = offline(args, env)
        best_offline = max(best_offline, result["sentences_per_second"])
        server, address = start_server(args, env)
        try:
            served(address, sentences[: 2 * args.clients], args.clients)  # warm-up
            seconds = served(address, sentences, args.clients)
            best_served = max(best_served, len(sentences) / seconds)
            latencies += latency(address, sentences, args.latency_requests)
        finally:
            server.terminate()
            server.wait()
        print(f"round {round_ + 1}: offline {result['sentences_per_second']:.1f} sentences/s, "
              f"served {len(sentences) / seconds:.1f} sentences/s ({args.clients} clients)")
    report = {
        "workload": "serve",
        "sentences": len(sentences),
        "clients": args.clients,
        "threads": args.threads,
        "offline_sentences_per_second": best_offline,
        "served_sentences_per_second": best_served,
        "single_client_latency_ms": {
            "p50": percentile(sorted(latencies), 0.50),
            "p99": percentile(sorted(latencies), 0.99),
            "mean": statistics.fmean(latencies),
        },
    }
    print(json.dumps(report))
    print(f"ratios: serve_vs_offline={best_served / best_offline:.2f}")


if __name__ == "__main__":
    main()
