#!/usr/bin/env bash
# On the GPU machine (FAISS GPU pieces in /root/stash; carry .gpu/install.sh, .whl, .bench-data): run
# bench/quality.py once per JSON config given as an argument, for the Siamese rows on Omniglot.
set -uo pipefail
bash .gpu/install.sh >/dev/null || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/root/site:/tmp/site:$PWD PYTHONUNBUFFERED=1 SIMSEARCH_BENCH_DATA=$PWD/.bench-data
for config in "$@"; do
  echo "== $config"
  python3 bench/quality.py --datasets omniglot --only siamese:contrastive siamese:triplet --device cuda \
    --config "$config" --tag explore --out /tmp/explore 2>&1 | grep "^omniglot" | \
    python3 -c "import sys, json; [print(l[:l.index('{')], {k: v for k, v in json.loads(l[l.index('{'):l.rindex('}')+1]).items() if k in ('epochs', 'roc_auc', 'eer', 'one_shot_accuracy', 'heldout_eer')}) for l in sys.stdin]"
done
