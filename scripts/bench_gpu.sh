#!/usr/bin/env bash
# GPU benchmark for one run on an H100/H200 machine without internet, in under 10 minutes:
#   (a) the GPU (nvidia-smi);
#   (b) correctness: 3 BERT-mini steps on one fixed batch with our cpu, cuda and wgpu backends,
#       final losses compared with cpu's (|diff| < 1e-3), and cuda bf16 against cpu bf16 (< 2e-2);
#   (c) BERT-base training steps at seq 128 (batch 32) and seq 512 (batch 8), 20 steps after 5:
#       ours f32 and bf16 against PyTorch (transformers, sdpa attention, fused AdamW, bf16
#       autocast) doing the same work (its MLM head on the masked positions only, as ours), then
#       PyTorch as is (the head on every position) and f32 eager at seq 128; ours at seq 128 f32
#       on Burn's generic ops (`--no-fused-kernels`: what the CubeCL training kernels bring);
#   (d) a table (tokens/s, device memory, model TFLOP/s and MFU against the GPU's peak from the
#       table below, or PEAK_TFLOPS_BF16/PEAK_TFLOPS_F32) and the ratios ours / PyTorch.
# Every command runs under `timeout` (its own cap, and never past the overall budget), so a hang
# costs its cap only; failures are reported and the script goes on. JSON lines go to
# $RESULTS_DIR/gpu-<timestamp>.jsonl.
#
# Usage: BERT=path/to/bert scripts/bench_gpu.sh     (bert built with --features cuda,wgpu)
# Env:   BUDGET_S (default 570: seconds for everything), RESULTS_DIR (default bench-results),
#        DRY_RUN=1 (everything on the CPU with BERT-mini at seq 32 and 2 steps: checks the
#        script, the JSON and the wgpu part where no GPU is; `cuda` runs become `cpu` runs).
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

DRY_RUN=${DRY_RUN:-0}
gpu=cuda steps=(--steps 20 --warmup 5) shrink=() seqs="128 512" mini_cap=120
if [ "$DRY_RUN" = 1 ]; then
  # Mesa's software Vulkan compiles and runs BERT-mini's kernels slowly: a longer cap.
  gpu=cpu steps=(--steps 2 --warmup 1) seqs=128 mini_cap=500
  shrink=(--set data.max_seq_length=32 --set training.batch_size=4)
fi

echo "==> (a) GPU"
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi FAILED"
# Dense peak TFLOP/s (NVIDIA's data sheets, without sparsity): bf16 tensor cores, and f32 on
# CUDA cores (neither side uses TF32: Burn does not, PyTorch's default keeps it off).
peaks() {
  case "$1" in
    *H200* | *H100*SXM* | *"H100 80GB HBM3"*) echo "989 67" ;;
    *H100*) echo "756 51" ;;
    *A100*) echo "312 19.5" ;;
    *L40S*) echo "362 91.6" ;;
    *L4*) echo "121 30.3" ;;
    *) echo "" ;;
  esac
}
read -r table_bf16 table_f32 <<<"$(peaks "$name")"
PEAK_TFLOPS_BF16=${PEAK_TFLOPS_BF16:-$table_bf16}
PEAK_TFLOPS_F32=${PEAK_TFLOPS_F32:-$table_f32}
echo "peak TFLOP/s: bf16 ${PEAK_TFLOPS_BF16:-unknown}, f32 ${PEAK_TFLOPS_F32:-unknown} (${name:-no GPU name})"
# --peak-tflops for a precision, when known.
peak() {
  local value
  if [ "$1" = bf16 ]; then value=${PEAK_TFLOPS_BF16:-}; else value=${PEAK_TFLOPS_F32:-}; fi
  [ -n "$value" ] && echo "--peak-tflops $value"
}

echo
echo "==> (b) correctness: BERT-mini, 3 steps on a fixed batch"
for backend in cpu $gpu wgpu; do
  run "mini $backend" "$mini_cap" "$BERT" bench train --config configs/bench/bert-mini.toml --steps 3 \
    --warmup 0 --backend "$backend" --json --fixed-batch "${shrink[@]}"
done
# bf16 mixed precision: CUDA against the CPU's bf16 (emulated there, so slow but exact).
for backend in cpu $gpu; do
  run "mini $backend bf16" 120 "$BERT" bench train --config configs/bench/bert-mini.toml \
    --steps 3 --warmup 0 --backend "$backend" --json --fixed-batch --precision bf16 "${shrink[@]}"
done

echo
echo "==> (c) BERT-base training, ${steps[1]} steps after ${steps[3]}"
model=base torch_device=cuda
if [ "$DRY_RUN" = 1 ]; then model=mini torch_device=cpu; fi
config_of() { if [ "$model" = base ]; then echo "configs/bench/bert-base-$1.toml"; else echo configs/bench/bert-mini.toml; fi; }
# PyTorch reads the config's sequence length and batch: the dry run writes a shrunk copy.
torch_config() {
  local config
  config=$(config_of "$1")
  if [ "$DRY_RUN" = 1 ]; then
    sed -e 's/^max_seq_length = .*/max_seq_length = 32/' -e 's/^batch_size = .*/batch_size = 4/' \
      "$config" >"$RESULTS_DIR/dry-$1.toml"
    config=$RESULTS_DIR/dry-$1.toml
  fi
  echo "$config"
}
# Same work first (what the target is measured on), then PyTorch as is.
for seq in $seqs; do
  for precision in f32 bf16; do
    # shellcheck disable=SC2046
    run "ours base-$seq $precision" 150 "$BERT" bench train --config "$(config_of "$seq")" \
      "${steps[@]}" --backend "$gpu" --precision "$precision" --json "${shrink[@]}" $(peak "$precision")
    # shellcheck disable=SC2046
    run "pytorch base-$seq $precision sdpa, same work" 120 python3 scripts/bench_pytorch.py train \
      --config "$(torch_config "$seq")" "${steps[@]}" --device "$torch_device" \
      --precision "$precision" --attention sdpa --mlm-masked-only $(peak "$precision")
  done
done
# What the CubeCL training kernels bring: the same f32 step on Burn's generic ops.
# shellcheck disable=SC2046
run "ours base-128 f32, generic ops" 150 "$BERT" bench train --config "$(config_of 128)" \
  "${steps[@]}" --backend "$gpu" --precision f32 --no-fused-kernels --json "${shrink[@]}" $(peak f32)
for precision in f32 bf16; do
  # shellcheck disable=SC2046
  run "pytorch base-128 $precision sdpa, as is" 120 python3 scripts/bench_pytorch.py train \
    --config "$(torch_config 128)" "${steps[@]}" --device "$torch_device" --precision "$precision" \
    --attention sdpa $(peak "$precision")
done
# shellcheck disable=SC2046
run "pytorch base-128 f32 eager, as is" 120 python3 scripts/bench_pytorch.py train \
  --config "$(torch_config 128)" "${steps[@]}" --device "$torch_device" --precision f32 \
  --attention eager $(peak f32)

echo
echo "==> (d) results: $results"
python3 - "$results" <<'EOF'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]

print("\ncorrectness (BERT-mini, 3 steps, fixed batch): final loss against cpu (f32: |diff| < 1e-3, bf16: < 2e-2)")
mini = {(r["backend"], r["precision"]): r["final_loss"] for r in rows if r.get("fixed_batch")}
gpu = "cuda" if any(r["backend"] == "cuda" for r in rows) else "cpu"
for backend, precision, tolerance in ((gpu, "f32", 1e-3), ("wgpu", "f32", 1e-3), (gpu, "bf16", 2e-2)):
    ours, ref = mini.get((backend, precision)), mini.get(("cpu", precision))
    label = f"{backend} {precision}"
    if ours is None:
        print(f"  {label:<10} missing")
    elif ref is None:
        print(f"  {label:<10} {ours:.6f}  (no cpu reference)")
    else:
        diff = abs(ours - ref)
        print(f"  {label:<10} {ours:.6f}  cpu {ref:.6f}  diff {diff:.2e}  {'ok' if diff < tolerance else 'FAIL'}")

train = [r for r in rows if not r.get("fixed_batch")]
print(f"\n{'framework':<9} {'seq':>4} {'batch':>5} {'prec':<5} {'attention':<9} {'kernels':<7} {'mlm head':<8} "
      f"{'median ms':>10} {'tokens/s':>10} {'device MiB':>10} {'TFLOP/s':>8} {'MFU':>6} {'loss':>8}")
for r in sorted(train, key=lambda r: (r["seq_len"], r["precision"], r["framework"], r["attention"])):
    dev, mfu = r.get("peak_device_mib"), r.get("mfu")
    head = "masked" if r.get("mlm_head", "masked positions") == "masked positions" else "all"
    kernels = "-" if r["framework"] != "burn" else ("fused" if r.get("fused_kernels", True) else "generic")
    print(f"{r['framework']:<9} {r['seq_len']:>4} {r['batch_size']:>5} {r['precision']:<5} "
          f"{r['attention']:<9} {kernels:<7} {head:<8} {r['step_time_ms']['median']:>10.1f} {r['tokens_per_second']:>10.0f} "
          f"{'-' if dev is None else round(dev):>10} {r.get('tflops_per_second', float('nan')):>8.2f} "
          f"{'-' if mfu is None else f'{mfu:.1%}':>6} {r['final_loss']:>8.3f}")


def pick(framework, seq, precision, attention=None, head=None, fused=True):
    for r in train:
        if (r["framework"], r["seq_len"], r["precision"]) == (framework, seq, precision) and (
            attention is None or r["attention"] == attention
        ) and (head is None or r.get("mlm_head") == head) and r.get("fused_kernels", True) == fused:
            return r
    return None


seqs = sorted({r["seq_len"] for r in train})
ratios = []
for seq in seqs:
    for precision in ("f32", "bf16"):
        ratios.append((f"seq{seq}_{precision}_same_work", pick("burn", seq, precision),
                       pick("pytorch", seq, precision, "sdpa", "masked positions")))
for precision in ("f32", "bf16"):
    ratios.append((f"seq{seqs[0]}_{precision}_as_is", pick("burn", seqs[0], precision),
                   pick("pytorch", seqs[0], precision, "sdpa", "all positions")))
ratios.append((f"seq{seqs[0]}_f32_vs_eager", pick("burn", seqs[0], "f32"), pick("pytorch", seqs[0], "f32", "eager")))
ratios.append((f"seq{seqs[0]}_f32_kernels_vs_generic", pick("burn", seqs[0], "f32"),
               pick("burn", seqs[0], "f32", fused=False)))
print("\nratios (tokens/s: ours / pytorch; kernels_vs_generic: ours / ours on Burn's generic ops): " + " ".join(
    f"{name}={ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}" if ours and theirs else f"{name}=n/a"
    for name, ours, theirs in ratios
))
EOF
echo "failures: $failures"
[ "$failures" -eq 0 ]
