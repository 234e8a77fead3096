#!/usr/bin/env bash
# GPU benchmark for one run on an H100/H200 machine without internet, in under 10 minutes:
#   (a) the GPU (nvidia-smi);
#   (b) correctness: 3 BERT-mini steps on one fixed batch with our cpu, cuda and wgpu backends,
#       final losses compared with cpu's (|diff| < 1e-3), and cuda bf16 against cpu bf16 (< 2e-2);
#   (c) BERT-base training steps at seq 128 (batch 32) and seq 512 (batch 8), 20 steps after 5:
#       ours f32 and bf16, PyTorch (transformers) f32 and bf16 with sdpa attention, and PyTorch
#       f32 eager at seq 128;
#   (d) a table and the ratios ours / PyTorch tokens/s of each matching pair.
# Every command runs under `timeout` (its own cap, and never past the overall budget), so a hang
# costs its cap only; failures are reported and the script goes on. JSON lines go to
# $RESULTS_DIR/gpu-<timestamp>.jsonl.
#
# Usage: BERT=path/to/bert scripts/bench_gpu.sh     (bert built with --features cuda,wgpu)
# Env:   BUDGET_S (default 570: seconds for everything), RESULTS_DIR (default bench-results).
# Needs python3 with torch (CUDA) and transformers.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

: "${BERT:?set BERT=path/to/bert (built with --features cuda,wgpu)}"
[ -x "$BERT" ] || { echo "error: BERT=$BERT is not an executable" >&2; exit 1; }
BUDGET_S=${BUDGET_S:-570}
RESULTS_DIR=${RESULTS_DIR:-bench-results}
export HF_HUB_OFFLINE=1

mkdir -p "$RESULTS_DIR"
results=$RESULTS_DIR/gpu-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$results"
deadline=$((SECONDS + BUDGET_S))
failures=0

# run LABEL CAP_S CMD...: runs CMD under timeout (CAP_S, or what is left of the budget), prints
# its table and appends its last stdout line (a JSON object) to $results.
run() {
  local label=$1 cap=$2 log
  shift 2
  local left=$((deadline - SECONDS))
  local limit=$((cap < left ? cap : left))
  echo
  echo "==> $label: $*"
  if [ "$limit" -lt 15 ]; then
    echo "    SKIPPED (budget spent)"
    failures=$((failures + 1))
    return
  fi
  log=$(mktemp)
  local start=$SECONDS
  timeout -k 5 "$limit" "$@" >"$log"
  local rc=$?
  head -n -1 "$log"
  if [ "$rc" -eq 0 ] && tail -n 1 "$log" | python3 -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
    tail -n 1 "$log" >>"$results"
    echo "    ($((SECONDS - start)) s)"
  else
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "    TIMEOUT after $limit s"
    echo "    FAILED (exit $rc, $((SECONDS - start)) s); last line: $(tail -n 1 "$log")"
    failures=$((failures + 1))
  fi
  rm -f "$log"
}

echo "==> (a) GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi FAILED"

echo
echo "==> (b) correctness: BERT-mini, 3 steps on a fixed batch"
for backend in cpu cuda wgpu; do
  run "mini $backend" 120 "$BERT" bench train --config configs/bench/bert-mini.toml --steps 3 \
    --warmup 0 --backend "$backend" --json --fixed-batch
done
# bf16 mixed precision: CUDA against the CPU's bf16 (emulated there, so slow but exact).
for backend in cpu cuda; do
  run "mini $backend bf16" 120 "$BERT" bench train --config configs/bench/bert-mini.toml \
    --steps 3 --warmup 0 --backend "$backend" --json --fixed-batch --precision bf16
done

echo
echo "==> (c) BERT-base training, 20 steps after 5"
for seq in 128 512; do
  config=configs/bench/bert-base-$seq.toml
  for precision in f32 bf16; do
    run "ours base-$seq $precision" 150 "$BERT" bench train --config "$config" --steps 20 \
      --warmup 5 --backend cuda --precision "$precision" --json
    run "pytorch base-$seq $precision sdpa" 120 python3 scripts/bench_pytorch.py train \
      --config "$config" --steps 20 --warmup 5 --device cuda --precision "$precision" \
      --attention sdpa
  done
done
run "pytorch base-128 f32 eager" 120 python3 scripts/bench_pytorch.py train \
  --config configs/bench/bert-base-128.toml --steps 20 --warmup 5 --device cuda --precision f32 \
  --attention eager

echo
echo "==> (d) results: $results"
python3 - "$results" <<'EOF'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]

print("\ncorrectness (BERT-mini, 3 steps, fixed batch): final loss against cpu (f32: |diff| < 1e-3, bf16: < 2e-2)")
mini = {(r["backend"], r["precision"]): r["final_loss"]
        for r in rows if r["framework"] == "burn" and r["model"] == "mini"}
for backend, precision, tolerance in (("cuda", "f32", 1e-3), ("wgpu", "f32", 1e-3), ("cuda", "bf16", 2e-2)):
    ours, ref = mini.get((backend, precision)), mini.get(("cpu", precision))
    label = f"{backend} {precision}"
    if ours is None:
        print(f"  {label:<10} missing")
    elif ref is None:
        print(f"  {label:<10} {ours:.6f}  (no cpu reference)")
    else:
        diff = abs(ours - ref)
        print(f"  {label:<10} {ours:.6f}  cpu {ref:.6f}  diff {diff:.2e}  {'ok' if diff < tolerance else 'FAIL'}")

train = [r for r in rows if r["model"] != "mini"]
print(f"\n{'framework':<9} {'seq':>4} {'batch':>5} {'prec':<5} {'attention':<9} {'median ms':>10} "
      f"{'tokens/s':>10} {'device MiB':>10} {'loss':>8}")
for r in sorted(train, key=lambda r: (r["seq_len"], r["precision"], r["framework"], r["attention"])):
    dev = r.get("peak_device_mib")
    print(f"{r['framework']:<9} {r['seq_len']:>4} {r['batch_size']:>5} {r['precision']:<5} "
          f"{r['attention']:<9} {r['step_time_ms']['median']:>10.1f} {r['tokens_per_second']:>10.0f} "
          f"{'-' if dev is None else round(dev):>10} {r['final_loss']:>8.3f}")


def pick(framework, seq, precision, attention=None):
    for r in train:
        if (r["framework"], r["seq_len"], r["precision"]) == (framework, seq, precision) and (
            attention is None or r["attention"] == attention
        ):
            return r
    return None


ratios = []
for seq in (128, 512):
    for precision in ("f32", "bf16"):
        ratios.append((f"base{seq}_{precision}", pick("burn", seq, precision), pick("pytorch", seq, precision, "sdpa")))
ratios.append(("base128_f32_vs_eager", pick("burn", 128, "f32"), pick("pytorch", 128, "f32", "eager")))
print("\nratios (ours / pytorch tokens/s): " + " ".join(
    f"{name}={ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}" if ours and theirs else f"{name}=n/a"
    for name, ours, theirs in ratios
))
EOF
echo "failures: $failures"
[ "$failures" -eq 0 ]
