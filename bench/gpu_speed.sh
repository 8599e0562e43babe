#!/usr/bin/env bash
# On the lent GPU machine (FAISS GPU pieces in /root/stash, see ../shared/gpu/README.md; carry .gpu/install.sh,
# .whl with pytorch-metric-learning and .bench-data, a copy of ../shared/data). One step per call, as each
# must fit the per-call limit:
#   bash bench/gpu_speed.sh tests     # install; the GPU tests and the modules whose searches use the GPU
#   bash bench/gpu_speed.sh real      # d) index types on 1M real embeddings (bench/speed.py --only real)
#   bash bench/gpu_speed.sh search    # b) simsearch over raw FAISS at 1M and 10M vectors, float32 and float16
#   bash bench/gpu_speed.sh types     # d) index types at 1M and 10M generated vectors
# Results go to $OUT (speed-gpu.json, logs).
set -uo pipefail
if [ ! -d /root/site/faiss ]; then bash .gpu/install.sh || exit 1; fi
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/root/site:/tmp/site:$PWD PYTHONUNBUFFERED=1 SIMSEARCH_BENCH_DATA=$PWD/.bench-data
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m simsearch "$@"\n' > /tmp/bin/simsearch && chmod +x /tmp/bin/simsearch
export PATH=/tmp/bin:$PATH
[ -f /tmp/speed-gpu.json ] && cp /tmp/speed-gpu.json "$OUT/"
speed() { python3 bench/speed.py --device cuda --tag gpu --out "$OUT" --work /tmp/speedwork "$@"; cp "$OUT/speed-gpu.json" /tmp/; }
case "${1:-}" in
  tests)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import faiss, torch; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), 'cagra', hasattr(faiss, 'GpuIndexCagra'), 'torch', torch.__version__)"
    python3 -m pytest -q -p no:cacheprovider -x tests/vectors/test_vectors.py tests/indexing/test_indexing.py tests/cli/test_cli.py tests/training/test_train.py 2>&1 \
      | tee "$OUT/pytest_gpu.log" | tail -20
    python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -3 ;;
  real) speed --only real --types flat ivf ivfpq cagra 2>&1 | grep -v Warning ;;
  search) speed --only search --sizes 1000000 10000000 2>&1 | grep -v Warning ;;
  types) speed --only types --sizes 1000000 10000000 --types flat ivf ivfpq cagra 2>&1 | grep -v Warning ;;
  *) echo "usage: bash bench/gpu_speed.sh tests|real|search|types" >&2; exit 2 ;;
esac
