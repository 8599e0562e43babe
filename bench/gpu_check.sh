#!/usr/bin/env bash
# One call on the lent GPU machine (see ../shared/gpu/README.md; carry .gpu/install.sh and .whl, which holds the
# pytorch-metric-learning wheel): install FAISS GPU, then run the whole test suite (GPU tests included), the demo
# (training and FAISS search on the GPU) and bench/gpu_check.py. Results go to $OUT.
set -uo pipefail
bash .gpu/install.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/root/site:/tmp/site:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m simsearch "$@"\n' > /tmp/bin/simsearch && chmod +x /tmp/bin/simsearch
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | grep -v "Warning\|os.fork\|self.pid" | tee "$OUT/pytest_gpu.log" | tail -15
python3 -m simsearch demo 2>&1 | tee "$OUT/demo_gpu.log" | tail -12
python3 bench/gpu_check.py "$OUT/gpu_check.json"
