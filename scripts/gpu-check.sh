#!/usr/bin/env bash
# The whole GPU check in one device call (run from the repo root on the GPU
# machine, after scripts/gpu-pack.sh here): card, the GoogleTest suites with the
# GPU backend, compute-sanitizer memcheck on representative shapes, and
# `tmoe bench --backend gpu`. Full logs go to $OUT (or ./gpu-check-out).
set -u
bin=.gpu-build
[ -f "$bin/bin.tar.xz" ] && tar -C "$bin" -xJf "$bin/bin.tar.xz"
out=${OUT:-gpu-check-out}
mkdir -p "$out"
status=0
# step NAME CMD...: runs CMD with its output in $out/NAME.log, shows the end.
step() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"
  if [ $rc -ne 0 ]; then echo "== $name FAILED (exit $rc)"; status=1; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
step info "$bin/tmoe" info
# The fake-driver suites load test doubles from the build tree; they run in CI.
step tests "$bin/tmoe_tests" --gtest_brief=1 --gtest_filter="${TESTS:-*:-*GpuRuntimeTest*:GpuDriverSelectionTest*}"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/tmoe_tests" --gtest_brief=1 \
  --gtest_filter="${SANITIZE_TESTS:-*GpuSanitize*}"
step bench "$bin/tmoe" bench --backend gpu --model "${MODEL:-mixtral-8x7b}" \
  --tokens "${TOKENS:-1,16,64,256,512,2048}" --json "$out/bench.json"
exit $status
