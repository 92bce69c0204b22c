#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): build, every GPU test, the GPU benchmarks, with
# logs and JSON under $OUT. The machine has no network: carry the scipy-openblas32 and tqdm wheels in
# .whl/ (scikit-build-core is not needed with --no-build-isolation).
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"])
# All sections may not fit one call's 10 minutes: SECTIONS picks some (default all, in this order):
#   core     build, the CUDA engine tests, the engine and host-streaming benchmarks
#   scan     the scanner's GPU test and the Llama-7B-shaped end-to-end scan (goal <= 20 s)
#   torch    the CUDA tests of the penalties, diagnostics, NC metrics, monitor and torch.linalg, and the
#            GPU rows of the VICReg and monitor benchmarks
# e.g. SECTIONS="core torch" bash benchmarks/gpu_session.sh, then SECTIONS=scan in a second call (a warm
# machine keeps the build; a fresh one rebuilds first).
set -uo pipefail
OUT=${OUT:-/tmp/out}
SECTIONS=${SECTIONS:-core scan torch}
mkdir -p "$OUT"
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site CMAKE_BUILD_PARALLEL_LEVEL=16 RANKSCOPE_CUDA=ON
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if has core || ! python3 -c "import rankscope._cuda" 2>/dev/null; then
  python3 -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
fi
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")
day=$(date +%F)
if has core; then
  python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
  python3 benchmarks/gpu_bench.py --rows "${ROWS:-0,1}" --no-cupy --out "$OUT/gpu-$dev-$day.json" 2>&1 | tee "$OUT/gpu-$dev-$day.log"
  python3 benchmarks/gpu_host_bench.py --rows "${HOST_ROWS:-0,1,3}" --out "$OUT/gpu-host-$dev-$day.json" 2>&1 \
    | tee "$OUT/gpu-host-$dev-$day.log"
fi
if has scan; then
  # A Llama-7B-shaped bfloat16 checkpoint (13.5 GB, drawn by torch on the GPU, page cache dropped)
  # scanned from disk end to end. The machine has pandas and safetensors; tqdm comes from .whl/.
  python3 -m pytest -q -m cuda tests/test_scan.py -p no:cacheprovider 2>&1 | tee "$OUT/scan-tests.log" | tail -5
  python3 benchmarks/bench_scan.py --cases llm --llm "${LLM:-llama-7b}" --device cuda --gen-device cuda \
    --folder /tmp --out "$OUT/scan-llm-$dev-$day.json" 2>&1 | tee "$OUT/scan-llm-$dev-$day.log" | tail -3
fi
if has torch; then
  # torch ops on the device checked against the CPU core; the monitor's side stream and lazy read-back
  # against the CPU monitor; torch.linalg drop-ins on CUDA tensors.
  python3 -m pytest -q -m cuda tests/test_penalties.py tests/test_collapse.py tests/test_neural_collapse.py \
    tests/test_monitor.py tests/test_torch_linalg.py -p no:cacheprovider 2>&1 | tee "$OUT/torch-tests.log" | tail -8
  python3 benchmarks/gpu_penalties_bench.py --out "$OUT/gpu-penalties-$dev-$day.json" 2>&1 | tail -3
  python3 benchmarks/bench_monitor.py --device cuda --out "$OUT/monitor-$dev-$day.json" 2>&1 | tail -3
fi
