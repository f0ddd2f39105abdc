#!/usr/bin/env bash
# The main job on the bundled example: set up (if needed), then convert an x-transformers 1.26.0
# checkpoint, inspect it, migrate it to the installed xtf, verify it, and export it back for 1.26.0.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${XTF_VENV:-.venv}"
if [ ! -x "$VENV/bin/xtf" ]; then
    python3 -m venv "$VENV"
    # set-up output (pip's and the build backend's notices) is shown only when the install fails
    SETUP_LOG="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install -q -c constraints.txt -e . >"$SETUP_LOG" 2>&1; then
        cat "$SETUP_LOG" >&2
        rm -f "$SETUP_LOG"
        exit 1
    fi
    rm -f "$SETUP_LOG"
fi
XTF="$VENV/bin/xtf"
OUT="${1:-out/demo}"
mkdir -p "$OUT"
rm -f "$OUT"/*.safetensors "$OUT"/*.pt "$OUT"/*.json
EX=examples/legacy-1.26.0

echo "== 1. stamp the legacy checkpoint (x-transformers 1.26.0)"
"$XTF" convert "$EX/model.pt" --from x-transformers==1.26.0 --config "$EX/config.json" -o "$OUT/model-1.26.0.safetensors"
echo "== 2. what the file says about itself (header only)"
"$XTF" inspect "$OUT/model-1.26.0.safetensors"
echo "== 3. the plan, then the migration to the installed xtf"
# the plan is captured whole, then cut: no pipe whose early close would race the writer under pipefail
PLAN="$("$XTF" migrate "$OUT/model-1.26.0.safetensors" -o "$OUT/model.safetensors" --dry-run)"
head -n 8 <<<"$PLAN"
echo "  ... ($(wc -l <<<"$PLAN") lines in all)"
"$XTF" migrate "$OUT/model-1.26.0.safetensors" -o "$OUT/model.safetensors"
"$XTF" verify "$OUT/model.safetensors"
echo "== 4. same outputs as x-transformers 1.26.0 gave (stored in the fixture corpus)"
"$VENV/bin/python" - "$OUT/model.safetensors" <<'PY'
import sys
import torch
import xtf_core
from safetensors.torch import load_file

io = load_file("tests/fixtures/legacy/1.26.0/dec_rotary.io.safetensors")
model = xtf_core.load(sys.argv[1])
with torch.no_grad():
    diff = (model(io["x"]) - io["out"]).abs().max().item()
print(f"max |xtf - x-transformers 1.26.0| = {diff:.2e}")
sys.exit(0 if diff <= 1e-4 else 1)
PY
echo "== 5. export back for a deployment pinned to x-transformers 1.26.0"
"$XTF" convert "$OUT/model.safetensors" --to x-transformers==1.26.0 -o "$OUT/model-for-1.26.0.pt"
echo "demo OK: files in $OUT"
