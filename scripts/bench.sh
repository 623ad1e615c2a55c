#!/usr/bin/env bash
# The main job on a fresh machine: install, build, and run the correctness-checked
# MoE layer benchmark on the best device present (a GPU, else the CPU, said so).
# Extra arguments go to `tmoe bench` (default: --model mixtral-8x7b --tokens 1,16,64).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install-deps.sh"
cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=Release -DTMOE_BUILD_TESTS=OFF
cmake --build "$here/build" -j"$(nproc)" --target tmoe_cli
"$here/build/tmoe" info
if [ $# -eq 0 ]; then set -- --model mixtral-8x7b --tokens 1,16,64; fi
exec "$here/build/tmoe" bench --backend auto "$@"
