#!/usr/bin/env bash
# Installs what tritonmoe builds with on a fresh Debian 12 machine (root or sudo).
# Why each is here: README.md, "Dependencies".
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages="cmake g++ make python3 python3-pip libcli11-dev nlohmann-json3-dev libopenblas-dev libgtest-dev libgmock-dev"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo_if_needed apt-get update -q
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
# Triton compiles the kernels ahead of time at build time; pinned (tools/aot/requirements.txt).
python3 -m pip install -q -r "$here/tools/aot/requirements.txt"
