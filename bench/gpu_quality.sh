#!/usr/bin/env bash
# On the lent GPU machine, after the FAISS GPU pieces are in /root/stash (see ../shared/gpu/README.md):
# carry .gpu/install.sh, .whl (pytorch-metric-learning) and .bench-data (a copy of ../shared/data).
# Runs the test suite (GPU tests included) and the Siamese rows of bench/quality.py on CUDA.
set -uo pipefail
bash .gpu/install.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/root/site:/tmp/site:$PWD PYTHONUNBUFFERED=1 SIMSEARCH_BENCH_DATA=$PWD/.bench-data
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m simsearch "$@"\n' > /tmp/bin/simsearch && chmod +x /tmp/bin/simsearch
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -6
python3 bench/quality.py --only siamese:contrastive siamese:triplet --device cuda --tag gpu --out "$OUT" "$@" 2>&1 \
  | grep -v Warning | tee "$OUT/quality_gpu.log"
