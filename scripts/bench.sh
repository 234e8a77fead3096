#!/usr/bin/env bash
# CPU benchmark, ours against PyTorch: the BERT-mini pretraining step (configs/bench/bert-mini.toml,
# batch 32 x seq 128, MLM + NSP) and all-MiniLM-L6-v2 sentence encoding (batch 32, seq 128),
# `bert bench` and scripts/bench_pytorch.py alternating (ours, pytorch, ours, pytorch), the best
# throughput of each kept; the encoding is also run on ONNX Runtime (scripts/bench_ort.py: the
# model exported with torch.onnx.export, graph optimisations on, the same sentences, batching and
# threads), in the same rounds (ours, pytorch, onnxruntime). Every JSON line goes to
# bench-results/<timestamp>.jsonl; the last line printed is
# `ratios: train_cpu=X train_cpu_as_is=Z encode_cpu=Y encode_ort=W` (ours / pytorch: tokens/s,
# sentences/s; encode_ort: ours / onnxruntime, sentences/s). train_cpu compares the same work
# (PyTorch's MLM head on the masked positions only, as ours); train_cpu_as_is compares against
# transformers' BertForPreTraining as it is (MLM logits at every position). Peak memory is VmHWM
# on every side.
#
# Usage: scripts/bench.sh [--quick]     (--quick: fewer steps and sentences, one round: < 10 min
#                                        on 2 cores)
# Env:   BERT (default target/release/bert; built with `cargo build --release` when missing),
#        THREADS (default nproc; RAYON_NUM_THREADS for ours, torch.set_num_threads for PyTorch,
#        intra_op_num_threads for ONNX Runtime),
#        MODEL (default .cache/models/all-MiniLM-L6-v2, fetched by scripts/fetch_models.sh),
#        INPUT (default tests/fixtures/corpus/moby.txt).
# Needs python3 with torch, transformers and sentence-transformers, and for the ONNX Runtime row
# onnxruntime, onnx and onnxscript (the export is cached in .cache/onnx/).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BERT=${BERT:-target/release/bert}
THREADS=${THREADS:-$(nproc)}
MODEL=${MODEL:-.cache/models/all-MiniLM-L6-v2}
INPUT=${INPUT:-tests/fixtures/corpus/moby.txt}
CONFIG=configs/bench/bert-mini.toml
BATCH=32
SEQ=128

case "${1:-}" in
  --quick) rounds=1 steps=5 warmup=1 sentences=128 ;;
  "") rounds=2 steps=20 warmup=3 sentences=512 ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS

if [ ! -x "$BERT" ]; then
  if [ "$BERT" != target/release/bert ]; then
    echo "error: BERT=$BERT is not an executable" >&2
    exit 1
  fi
  echo "==> cargo build --release"
  cargo build --release || exit 1
fi
[ -d "$MODEL" ] || { echo "error: $MODEL missing (run scripts/fetch_models.sh)" >&2; exit 1; }

mkdir -p bench-results
results=bench-results/$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$results"
failures=0

# run LABEL CMD...: prints the command's table, appends its last stdout line (a JSON object) to
# $results; a failure is reported and the benchmark goes on.
run() {
  local label=$1 log
  shift
  log=$(mktemp)
  echo
  echo "==> $label: $*"
  local start=$SECONDS
  "$@" >"$log"
  local rc=$?
  head -n -1 "$log"
  if [ "$rc" -eq 0 ] && tail -n 1 "$log" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
    tail -n 1 "$log" >>"$results"
    echo "    ($((SECONDS - start)) s)"
  else
    echo "    FAILED (exit $rc, $((SECONDS - start)) s); last line: $(tail -n 1 "$log")"
    failures=$((failures + 1))
  fi
  rm -f "$log"
}

echo "threads $THREADS, $rounds round(s), train $steps steps after $warmup, encode $sentences sentences"
for round in $(seq "$rounds"); do
  run "train ours (round $round)" "$BERT" bench train --config "$CONFIG" --steps "$steps" \
    --warmup "$warmup" --backend cpu --json
  run "train pytorch (round $round)" python3 scripts/bench_pytorch.py train --config "$CONFIG" \
    --steps "$steps" --warmup "$warmup" --device cpu --threads "$THREADS"
  run "train pytorch, MLM head on masked positions only (round $round)" python3 scripts/bench_pytorch.py \
    train --config "$CONFIG" --steps "$steps" --warmup "$warmup" --device cpu --threads "$THREADS" \
    --mlm-masked-only
done
for round in $(seq "$rounds"); do
  run "encode ours (round $round)" "$BERT" bench encode --model "$MODEL" --batch-size "$BATCH" \
    --seq-len "$SEQ" --input "$INPUT" --sentences "$sentences" --backend cpu --json
  run "encode pytorch (round $round)" python3 scripts/bench_pytorch.py encode --model "$MODEL" \
    --batch-size "$BATCH" --seq-len "$SEQ" --input "$INPUT" --sentences "$sentences" \
    --device cpu --threads "$THREADS"
  run "encode onnxruntime (round $round)" python3 scripts/bench_ort.py --model "$MODEL" \
    --batch-size "$BATCH" --seq-len "$SEQ" --input "$INPUT" --sentences "$sentences" \
    --threads "$THREADS"
done

echo
echo "results: $results"
python3 - "$results" <<'EOF'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
metric = {"train": "tokens_per_second", "encode": "sentences_per_second"}
best = {}
for r in rows:
    who = {"burn": "ours", "onnxruntime": "onnxruntime"}.get(r["framework"], "pytorch")
    if who == "pytorch" and r.get("mlm_head") == "masked positions":
        who = "pytorch-masked-only"
    key = (r["workload"], who)
    if key not in best or r[metric[r["workload"]]] > best[key][metric[r["workload"]]]:
        best[key] = r

print(f"\n{'workload':<8} {'framework':<22} {'best throughput':>22} {'median ms':>10} {'peak RSS MiB':>13}")
for (workload, _), r in sorted(best.items()):
    ms = (r.get("step_time_ms") or r.get("time_ms"))["median"]
    unit = "tokens/s" if workload == "train" else "sentences/s"
    print(f"{workload:<8} {_:<22} {r[metric[workload]]:>10.1f} {unit:<11} {ms:>10.1f} "
          f"{r['peak_rss_mib']:>13.0f}")


def ratio(workload, baseline="pytorch"):
    ours, theirs = best.get((workload, "ours")), best.get((workload, baseline))
    if not ours or not theirs:
        return "n/a"
    return f"{ours[metric[workload]] / theirs[metric[workload]]:.2f}"


print(f"train_cpu: the same work (PyTorch's MLM head on masked positions only too); "
      f"train_cpu_as_is: transformers' BertForPreTraining as it is")
print(f"ratios: train_cpu={ratio('train', 'pytorch-masked-only')} "
      f"train_cpu_as_is={ratio('train')} encode_cpu={ratio('encode')} "
      f"encode_ort={ratio('encode', 'onnxruntime')}")
EOF
[ "$failures" -eq 0 ]
