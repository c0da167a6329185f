#!/usr/bin/env bash
# Device check for issue 13, sized for a short GPU lease: tiny-random and the official architectures
# (random init, nothing downloaded), fp32 and bf16, side by side. Writes JSON records to ${OUT:-.}.
# Run from the repository root: bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-.}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
run() {  # name, args...
  local name=$1; shift
  timeout 170 "$PY" -m benchmarks.pipeline --device cuda --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$?"; grep -E "img/s|stages|peak|boxes_match" "$OUT/$name.txt"
}
# the fused deformable attention (workers/stages/deform_attn.py) on CUDA: equal to upstream, and how fast
"$PY" - > "$OUT/deform_cuda.txt" 2>&1 <<'PYEOF'
import time, torch
from tests.test_deform_attn import inputs, upstream
from workers.stages.deform_attn import multi_scale_deformable_attn
args = [t.cuda() for t in inputs(2, [(100, 134), (50, 67), (25, 34), (13, 17)], 17821, 0.2)]
ref, ours = upstream()(*args), multi_scale_deformable_attn(*args)
print("max abs diff vs upstream", (ours - ref).abs().max().item())
for name, fn in (("upstream", upstream()), ("fused", multi_scale_deformable_attn)):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        fn(*args)
    torch.cuda.synchronize(); print(name, f"{(time.perf_counter() - t) / 20 * 1000:.2f} ms")
PYEOF
echo "deform_cuda rc=$?"; cat "$OUT/deform_cuda.txt"
run tiny_fp32 --models tiny-random --images 32 --batch-size 8
run full_fp32 --models random-full --images 16 --batch-size 4 --size 1280x960
run full_bf16 --models random-full --images 16 --batch-size 4 --size 1280x960 --precision bf16
LABELFLEET_COMPILE=inductor run full_bf16_compiled --models random-full --images 16 --batch-size 4 --size 1280x960 --precision bf16
