#!/usr/bin/env bash
# The GPU rows of issue 7, in one go on a machine with CUDA and torch (no vLLM needed):
#   1. CPU vs CUDA agreement of the default prune (bench/device_agreement.py);
#   2. the cost of the default prune of the 1.1B- and 7B-shaped random models on CUDA
#      (bench/prune_cost.py --device cuda);
#   3. prefill and static-cache decode speed, 7B-shaped dense vs Olica 20 %, batch 1/16/64
#      (bench/gpu_decode.py).
# Results go to $OUT (default /tmp/olica-gpu); copy them to bench/results/ to publish.
# On a copy of the tree without .git, set OLICA_COMMIT to the commit it was copied from.
set -u
OUT=${OUT:-/tmp/olica-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The dense linear algebra a 7B layer needs (d = 4096, float64), timed once each.
$PY - <<'PY'
import time, torch
d = 4096
a = torch.randn(d, d, dtype=torch.float64, device="cuda")
s = a @ a.T + d * torch.eye(d, dtype=torch.float64, device="cuda")
def t(name, f):
    f(); torch.cuda.synchronize(); t0 = time.perf_counter(); f(); torch.cuda.synchronize()
    print(f"linalg {name}: {time.perf_counter() - t0:.3f} s", flush=True)
t("svd 4096 f64", lambda: torch.linalg.svd(a, full_matrices=False))
t("svd gesvdj 4096 f64", lambda: torch.linalg.svd(a, full_matrices=False, driver="gesvdj"))
t("eigh 4096 f64", lambda: torch.linalg.eigh(s))
t("cholesky 4096 f64", lambda: torch.linalg.cholesky(s))
t("matmul 4096 f64", lambda: a @ a)
PY
$PY bench/device_agreement.py --out "$OUT/device_agreement.json"
echo "device_agreement exit $?"
$PY bench/prune_cost.py --device cuda --models random_1b random_7b --out "$OUT/prune_cost_cuda.json"
echo "prune_cost exit $?"
$PY bench/gpu_decode.py --model random_7b --device cuda --out "$OUT/gpu_decode.json"
echo "gpu_decode exit $?"
