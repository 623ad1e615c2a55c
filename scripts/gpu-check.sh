#!/usr/bin/env bash
# The whole GPU check in one device call (run from the repo root on the GPU
# machine, after scripts/gpu-pack.sh here): card, the GoogleTest suites with the
# GPU backend, compute-sanitizer memcheck on representative shapes and on every
# kernel choice, the Python binding and the kernels' JIT test, and `tmoe bench
# --backend gpu` for each model in $MODELS (default mixtral-8x7b; empty: none). With
# TUNE=1, first `tmoe tune` for the presets in $TUNE_MODELS (default all; the table
# lands in the logs as tuned-table.json, every swept candidate's time as tune-sweep.json,
# and the table serves the benches through TMOE_TUNING_TABLE).
# TUNE_FROM=configs/<device>.json starts that table from the committed one, so
# tuning some models keeps the others' rows (tune's staged sweep, performance-log.md #87,
# took 5-37 s a bucket on an H200: the four presets at T = 512, 2048, 8192 in one call's
# 440 s, at 1024 and 4096 in a second; with --exhaustive, 405 pairs a bucket, deepseek-v3
# T >= 2048 alone took about 100 s a bucket; give each call a few models and T).
# SKIP names steps to leave out (e.g. SKIP="tests memcheck python"). Logs go to
# ./gpu-check-out and, packed as gpu-check-logs.tar.gz, to $OUT when the device
# tool sets it.
set -u
bin=.gpu-build
[ -f "$bin/bin.tar.xz" ] && tar -C "$bin" -xJf "$bin/bin.tar.xz"
out=gpu-check-out
mkdir -p "$out"
pack=gpu-check-logs.tar.gz
. "$(dirname "$0")/device-step.sh"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
step info "$bin/tmoe" info
if [ "${TUNE:-0}" = 1 ]; then
  [ -n "${TUNE_FROM:-}" ] && cp "$TUNE_FROM" "$out/tuned-table.json"
  step tune timeout "${TUNE_SECONDS:-420}" "$bin/tmoe" tune --model "${TUNE_MODELS:-all}" \
    --tokens "${TUNE_TOKENS:-1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192}" --out "$out/tuned-table.json" \
    --sweep "$out/tune-sweep.json"
  [ -f "$out/tuned-table.json" ] && export TMOE_TUNING_TABLE="$out/tuned-table.json"
fi
# The fake-driver suites load test doubles from the build tree; they run in CI.
step tests "$bin/tmoe_tests" --gtest_brief=1 --gtest_filter="${TESTS:-*:-*GpuRuntimeTest*:GpuDriverSelectionTest*:*GpuForwardFakeTest*}"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/tmoe_tests" --gtest_brief=1 \
  --gtest_filter="${SANITIZE_TESTS:-*GpuSanitize*}"
# The Python binding under PyTorch on the GPU; pytest comes as wheels in .whl when
# the machine lacks it (see the device notes).
if ! python3 -c "import pytest" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
step python env TMOE_LIBRARY="$bin/libtmoe.so" python3 -m pytest python/tests/test_binding_torch_gpu.py -q
# Every pipeline stage through Triton's JIT with the tiles of tools/aot/variants.py,
# against torch in float64 (the bundle's binaries are covered by the suites above).
step kernels python3 kernels/tests/test_kernels_gpu.py --only jit

for model in $(echo "${MODELS-mixtral-8x7b}" | tr , ' '); do
  step "bench-$model" "$bin/tmoe" bench --backend gpu --model "$model" \
    --tokens "${TOKENS:-1,16,64,256,512,2048}" --check-rows "${CHECK_ROWS:-8}" --json "$out/bench-$model.json"
done
exit $status
