#!/usr/bin/env bash
# Builds here what scripts/gpu-check.sh runs on the GPU machine, which has no
# Debian -dev packages: the test and CLI binaries with OpenBLAS linked statically,
# packed into .gpu-build/bin.tar.xz (git-ignored; carried to the device call).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$here" -B "$here/build-gpu-pack" -DCMAKE_BUILD_TYPE=Release -DTMOE_STATIC_BLAS=ON >/dev/null
cmake --build "$here/build-gpu-pack" -j"$(nproc)" --target tmoe_tests tmoe_cli tmoe
# Compressed: two binaries with static OpenBLAS and the embedded bundle are
# larger than what one device call may carry (64 MiB).
stage=$(mktemp -d)
for f in tmoe tests/tmoe_tests libtmoe.so; do strip -o "$stage/$(basename $f)" "$here/build-gpu-pack/$f"; done
rm -rf "$here/.gpu-build" && mkdir -p "$here/.gpu-build"
tar -C "$stage" -cf - . | xz -T0 -6 > "$here/.gpu-build/bin.tar.xz"
rm -rf "$stage"
du -sh "$here/.gpu-build"
