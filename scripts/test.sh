#!/usr/bin/env bash
# Builds everything and passes the tests: the Release build (CPU backend, kernel
# bundle, fake-driver GPU runtime tests), the Python binding's tests, then the
# C++ suites again under ASan+UBSan.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
bash "$here/scripts/install-deps.sh"

cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$here/build" -j"$jobs"
ctest --test-dir "$here/build" --output-on-failure -j"$jobs"

# The Python binding over the library just built (CPU backend; its GPU tests run on a GPU machine).
python3 -m pip install -q -r "$here/python/requirements-test.txt"
TMOE_LIBRARY="$here/build" python3 -m pytest "$here/python/tests/test_binding_cpu.py" -q

# Sanitizers: the same suites without the kernel bundle (nothing in it runs on a CPU).
cmake -S "$here" -B "$here/build-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTMOE_SANITIZE=ON -DTMOE_BUILD_KERNELS=OFF
cmake --build "$here/build-sanitize" -j"$jobs" --target tmoe_tests tmoe_abi_tests tmoe_cli
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$here/build-sanitize" --output-on-failure -j"$jobs"
