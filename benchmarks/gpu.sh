#!/usr/bin/env bash
# The prepared GPU check: on a CUDA machine, the CUDA-only tests, the engine's throughput and the packing benchmark,
# within 8 minutes, each one's figures written under benchmarks/results/ (named after the GPU), so that the few
# minutes a GPU is lent are spent measuring. Run from the repository root, in an environment where the package
# imports (pip install -e ".[dev]", or PYTHONPATH=src beside an installed torch):
#
#     bash benchmarks/gpu.sh
#
# Each step has its own time limit, and a step that fails or runs out leaves the others' figures in place.
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:-}${PYTHONPATH:+:}$PWD/src"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check is for a GPU')" || exit 2
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")
out=benchmarks/results
step() {  # step NAME SECONDS COMMAND...: run it under its limit, keep what it printed in $out/<gpu>-NAME.txt
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds} s): $*"
    { echo "\$ $*"; echo "# $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null), $(python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"; \
      timeout "$seconds" "$@" 2>&1; echo "# exit $?"; } | tee "$out/$gpu-$name.txt"
}
step cuda-tests 90 python -m pytest -q -rs tests/test_runtime.py tests/test_gpu.py
step throughput-afd-resnet56-resnet20 150 python benchmarks/throughput.py --teacher resnet56 --student resnet20 \
    --method afd --steps 200 --warmup 10 --device cuda
step packing-resnet56-resnet20 200 python benchmarks/packing.py --device cuda --steps 100 --rounds 2 --sizes 2 4 10 \
    --fuse
step determinism 40 python benchmarks/determinism.py --epochs 1 --device cuda --methods kd afd
