#!/usr/bin/env bash
# One prepared check for a CUDA machine, under 5 minutes: the GPU-marked tests, the step-time benchmark on the GPU,
# and a 2-minute FIF fit on MNIST with a GPU evaluation (FID on 2,000 samples). Results go to $OUT (default
# gpu-check/): gpu_tests.log, step_time.md/json, mnist_fit.log, mnist_metrics.json, machine.txt.
#
#   bash scripts/gpu_check.sh            # in an environment whose torch has CUDA (injflow installed, or installable)
#
# It never installs torch: the machine's CUDA build is used. Nothing here runs in CI or in the default tests.
# (-o addopts="": one process on the one GPU, and no need for pytest-xdist there.)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device; nothing to check" >&2
  exit 2
fi
$PY -c "import injflow" 2>/dev/null || $PY -m pip install -q -e '.[test,data]' \
  || { echo "gpu_check: cannot install injflow here (its dependencies must be installable)" >&2; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"
status=0
echo "== GPU-marked tests"
timeout 150 $PY -m pytest -o addopts="" -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || status=1
echo "== step time on the GPU (FIF / AE, K = 1, 2, 4; MLP and ConvNet)"
timeout 120 $PY benchmarks/step_time.py --device cuda --rounds 30 --warmup 5 \
  --variants fif-mixed-k1,fif-mixed-k2,fif-mixed-k4,fif-backward-k1 \
  --markdown "$OUT/step_time.md" --json "$OUT/step_time.json" 2>&1 | tail -30 || status=1
echo "== 2-minute FIF fit on MNIST (Pythae ConvNet), evaluated on the GPU"
timeout 200 $PY -m injflow.cli fit configs/small/fif-pythae-convnet-mnist.yaml --set train.max_time=120 \
  train.accelerator=gpu train.devices=1 train.max_epochs=1000 train.progress_bar=false run.dir="$OUT/mnist" \
  2>&1 | tail -20 | tee "$OUT/mnist_fit.log" || status=1
timeout 120 $PY -m injflow.cli evaluate "$OUT/mnist" --device cuda --n-samples 2000 --fid-batch-size 200 --no-progress \
  2>&1 | tail -25 | tee "$OUT/mnist_eval.log" || status=1
cp "$OUT/mnist/metrics.json" "$OUT/mnist_metrics.json" 2>/dev/null || true
rm -rf "$OUT/mnist/checkpoints"
exit $status
