#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): build, every GPU test, the GPU benchmarks, with
# logs and JSON under $OUT. The machine has no network: carry the scipy-openblas32 wheel in .whl/
# (scikit-build-core is not needed with --no-build-isolation).
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"])   (.whl: scipy-openblas32 and tqdm wheels)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site CMAKE_BUILD_PARALLEL_LEVEL=16 RANKSCOPE_CUDA=ON
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")
day=$(date +%F)
python3 benchmarks/gpu_bench.py --rows "${ROWS:-0,1}" --no-cupy --out "$OUT/gpu-$dev-$day.json" 2>&1 | tee "$OUT/gpu-$dev-$day.log"
python3 benchmarks/gpu_host_bench.py --rows "${HOST_ROWS:-0,1,3}" --out "$OUT/gpu-host-$dev-$day.json" 2>&1 \
  | tee "$OUT/gpu-host-$dev-$day.log"
# The scanner on the GPU: its GPU test, then a Llama-7B-shaped bfloat16 checkpoint (13.5 GB, drawn by
# torch on the GPU, page cache dropped) scanned from disk end to end (goal: <= 20 s). .whl/ must also
# hold the tqdm wheel (the scanner's progress bar); the machine has pandas and safetensors.
python3 -m pytest -q -m cuda tests/test_scan.py -p no:cacheprovider 2>&1 | tee "$OUT/scan-tests.log" | tail -5
python3 benchmarks/bench_scan.py --cases llm --llm "${LLM:-llama-7b}" --device cuda --gen-device cuda \
  --folder /tmp --out "$OUT/scan-llm-$dev-$day.json" 2>&1 | tee "$OUT/scan-llm-$dev-$day.log" | tail -3
# Issue 15 on the GPU: the CUDA tests of the penalties, diagnostics and NC metrics (torch ops on the
# device, checked against the CPU core), and the GPU rows of the VICReg benchmark.
python3 -m pytest -q -m cuda tests/test_penalties.py tests/test_collapse.py tests/test_neural_collapse.py \
  -p no:cacheprovider 2>&1 | tee "$OUT/collapse-tests.log" | tail -5
python3 benchmarks/gpu_penalties_bench.py --out "$OUT/gpu-penalties-$dev-$day.json" 2>&1 | tail -3
# Issue 18 on the GPU: the monitor's CUDA test (side stream, lazy read-back, values equal the CPU
# monitor's) and the GPU rows of its overhead benchmark.
python3 -m pytest -q -m cuda tests/test_monitor.py -p no:cacheprovider 2>&1 | tee "$OUT/monitor-tests.log" | tail -5
python3 benchmarks/bench_monitor.py --device cuda --out "$OUT/monitor-$dev-$day.json" 2>&1 | tail -3
