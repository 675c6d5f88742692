#!/usr/bin/env bash
# The worked example of docs/training.md "Your own data": scikit-learn's breast-cancer table written by pandas'
# default to_csv (row index + a `target` column, values up to 4,254), trained with the defaults (scaled per column)
# and unscaled (data.standardize=none), sampled back to a CSV in the table's units. Run from the repository root:
#   bash docs/results/own_data/worked_example.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-docs/results/own_data}
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $($PY -c 'import torch; print("torch", torch.__version__)')"
$PY -c "from sklearn.datasets import load_breast_cancer; load_breast_cancer(as_frame=True).frame.to_csv('$WORK/cancer.csv')"
echo "\$ head -c 120 cancer.csv"; head -c 120 "$WORK/cancer.csv"; echo
COMMON=(data.name=array "data.options.path=$WORK/cancer.csv" data.options.label_key=target model.architecture=mlp
        model.latent_dim=5 train.max_epochs=200 train.progress_bar=false "train.samplers=[gaussian, gmm]" "run.root=$WORK/runs")
for scaling in auto none; do
  start=$(date +%s.%N)
  $PY -m injflow.cli fit --set "${COMMON[@]}" data.standardize=$scaling 2>&1 | grep -v "^  " | sed "s|$WORK/||g"
  run=$(ls -td "$WORK"/runs/*/ | head -1)
  echo "fit (standardize=$scaling): $(echo "$(date +%s.%N) - $start" | bc) s -> $(basename "$run")"
  $PY -m injflow.cli evaluate "$run" --no-progress > "$WORK/eval.txt" 2>&1
  $PY - "$run" "$scaling" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
lat = m.get("latent", {})
print(f"standardize={sys.argv[2]}: units: {m['units']}")
print(f"  test reconstruction error {m['reconstruction_error']:.1f}, NLL {m['nll']:.2f}, latent mean norm "
      f"{lat.get('mean_norm', float('nan')):.3g}, W2 prior {m['sample_quality']['prior']:.1f}, gmm {m['sample_quality']['gmm']:.1f}")
PYEOF
  $PY -m injflow.cli sample "$run" --n 1000 --sampler gmm --out "$WORK/samples_$scaling.csv" | sed "s|$WORK/||g"
done
$PY - "$WORK" <<'PYEOF'
import sys
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
work = sys.argv[1]
data = pd.read_csv(f"{work}/cancer.csv", index_col=0).drop(columns="target")
cols = ["mean radius", "mean area", "worst area", "mean smoothness"]
print("column means / stds: data | samples (standardize=auto) | samples (standardize=none)")
for name in ("auto", "none"):
    s = pd.read_csv(f"{work}/samples_{name}.csv")
    assert list(s.columns) == list(data.columns)
for c in cols:
    a, b = pd.read_csv(f"{work}/samples_auto.csv")[c], pd.read_csv(f"{work}/samples_none.csv")[c]
    print(f"  {c:16s} {data[c].mean():9.4g} / {data[c].std():8.4g} | {a.mean():9.4g} / {a.std():8.4g} | {b.mean():9.4g} / {b.std():8.4g}")
import warnings
warnings.simplefilter("ignore")
from injflow.data import load_dataset
split = load_dataset("array", path=f"{work}/cancer.csv", label_key="target")  # the runs' own splits (seed 0)
train, test = split.train.double().numpy(), split.test.double().numpy()
sc = StandardScaler().fit(train)
pca = PCA(5).fit(sc.transform(train))
rec = sc.inverse_transform(pca.inverse_transform(pca.transform(sc.transform(test))))
print(f"PCA (d=5, fitted on the standardised training split) on the same {len(test)} test rows, in the table's units: "
      f"mean reconstruction error {((rec - test) ** 2).sum(1).mean():.1f}")
PYEOF
