#!/usr/bin/env bash
# Builds here what scripts/gpu-check.sh runs on the GPU machine, which has no
# Debian -dev packages: the test and CLI binaries with OpenBLAS linked statically,
# gathered in .gpu-build/ (git-ignored; carried to the device call).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$here" -B "$here/build-gpu-pack" -DCMAKE_BUILD_TYPE=Release -DTMOE_STATIC_BLAS=ON >/dev/null
cmake --build "$here/build-gpu-pack" -j"$(nproc)" --target tmoe_tests tmoe_cli
rm -rf "$here/.gpu-build" && mkdir -p "$here/.gpu-build"
for f in tmoe tests/tmoe_tests; do strip -o "$here/.gpu-build/$(basename $f)" "$here/build-gpu-pack/$f"; done
du -sh "$here/.gpu-build"
