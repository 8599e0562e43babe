#!/usr/bin/env bash
# `simsearch eval --report` and `simsearch verify` on the real data in ../shared/data, through the CLI alone:
#   Omniglot: a Siamese model trained on Greek, Korean and Latin, evaluated on the unseen Balinese and
#   Early_Aramaic; verify on two drawings of one unseen character and on two different ones.
#   Fashion-MNIST subset: a Siamese model trained on the train split, evaluated on the test split.
# Writes bench/results/eval-<dataset>.json and the report figures into bench/results/eval-<dataset>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SIM=("$PY" -m simsearch)
WORK=${WORK:-$(mktemp -d)}
DEVICE=${DEVICE:-auto}
RESULTS=bench/results
"$PY" - "$WORK" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from bench.datasets import copy_omniglot, export_fashion
work = Path(sys.argv[1])
copy_omniglot(work / "omniglot-train", ["Greek", "Korean", "Latin"])
copy_omniglot(work / "omniglot-unseen", ["Balinese", "Early_Aramaic"])
export_fashion(work / "fashion-train", "train")
export_fashion(work / "fashion-test", "t10k")
PY
for dataset in omniglot fashion; do
  "${SIM[@]}" train "$WORK/$dataset-train" --family siamese --device "$DEVICE" --max-seconds 300 --out "$WORK/model-$dataset"
  rm -rf "$RESULTS/eval-$dataset"
  "${SIM[@]}" eval "$WORK/$dataset-$([ $dataset = omniglot ] && echo unseen || echo test)" --model "$WORK/model-$dataset" \
    --device "$DEVICE" --report "$RESULTS/eval-$dataset" --json > "$RESULTS/eval-$dataset.json"
  rm -f "$RESULTS/eval-$dataset/report.html"  # the PNGs are kept; the page is rebuilt by running this script
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], {e['name']: {k: round(e[k][0], 3) for k in ('vote_accuracy', 'map_at_r', 'roc_auc', 'eer')} for e in d['encoders']})" "$RESULTS/eval-$dataset.json"
done
# verify: two drawings of one unseen character, then two different unseen characters.
a=$(ls "$WORK"/omniglot-unseen/Balinese/character01/*.png | head -1)
b=$(ls "$WORK"/omniglot-unseen/Balinese/character01/*.png | sed -n 2p)
c=$(ls "$WORK"/omniglot-unseen/Early_Aramaic/character05/*.png | head -1)
set +e
"${SIM[@]}" verify "$a" "$b" --model "$WORK/model-omniglot"; echo "exit $?"
"${SIM[@]}" verify "$a" "$c" --model "$WORK/model-omniglot"; echo "exit $?"
