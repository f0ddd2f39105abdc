#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA and PyTorch but no network (the figures in the README).
#   bash benchmarks/device_run.sh [parity] [load] [forward]     (default: all three)
# Wheels for x-transformers 2.31.10 and its pure-Python dependencies may be carried in .whl/ (see
# docs/benchmarks.md); the repo's packages are put on the path under their installed names.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE="${XTF_SITE:-/tmp/xtf-site}"
mkdir -p "$SITE/xtf_cli"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
ln -sfn "$PWD/xtf_core" "$SITE/xtf_core"
ln -sfn "$PWD/migrations" "$SITE/xtf_migrations"
ln -sfn "$PWD/converters" "$SITE/xtf_converters"
ln -sfn "$PWD/cli.py" "$SITE/xtf_cli/cli.py"
touch "$SITE/xtf_cli/__init__.py"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
checks="${*:-parity load forward}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
if [[ " $checks " == *" parity "* ]]; then
    echo "== parity on the device (float32 and bf16)"
    python3 benchmarks/cuda_parity.py --device cuda || status=1
fi
if [[ " $checks " == *" load "* ]]; then
    echo "== load vs the safetensors floor"
    python3 benchmarks/bench_load.py --device cuda || status=1
fi
if [[ " $checks " == *" forward "* ]]; then
    echo "== forward and train step vs x-transformers attn_flash=True (bf16)"
    python3 benchmarks/bench_forward.py --device cuda --dtype bf16 || status=1
fi
exit $status
