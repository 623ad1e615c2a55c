#!/usr/bin/env bash
# The full peers run in one device call (run from the repo root on the GPU machine,
# carrying .gpu-build and .peers; about 6 minutes on an H100 with the MegaBlocks
# build): the card, the peers side by side (bench/peers.py), one plain read of each
# memory-bound cell's bytes (SYSTEMS=read, appended), and `tmoe bench` of each model
# in $MODELS at $TOKENS. Everything lands in one folder, packed into
# $OUT/peers-run.tar.gz after every step (a device call brings back few files, and a
# call cut off at its limit still brings back the steps so far). Here, afterwards:
#   mkdir -p bench/results/<dir> && tar -C bench/results/<dir> -xzf <files_at>/peers-run.tar.gz
#   (cd bench && python3 plot.py results/<dir> && python3 bench_tables.py results/<dir>)
set -u
bin=.gpu-build
tar -C "$bin" -xJf "$bin/bin.tar.xz" || exit 1
out=${RESULTS:-/tmp/peers-run}
rm -rf "$out" && mkdir -p "$out"
pack=peers-run.tar.gz
TAIL=${TAIL:-1}
. "$(dirname "$0")/device-step.sh"
export TMOE_LIBRARY=$bin/libtmoe.so PYTHONPATH=python:.peers/site:.peers PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
step setup bash bench/setup_peers.sh
step peers-run python3 bench/peers.py --out "$out"
SYSTEMS=read step read-run python3 bench/peers.py --out "$out" --append
for model in $(echo "${MODELS:-mixtral-8x7b,qwen3-30b-a3b,deepseek-v3,gpt-oss-120b}" | tr , ' '); do
  step "bench-$model" "$bin/tmoe" bench --backend gpu --model "$model" \
    --tokens "${TOKENS:-1,4,16,64,256,1024,2048,8192}" --check-rows 8 --json "$out/bench-$model.json"
done
exit $status
