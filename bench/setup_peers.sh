#!/usr/bin/env bash
# Builds MegaBlocks (megablocks_ops) and grouped_gemm (its cuBLAS grouped GEMM, the
# default build) on the GPU machine from the PyPI sdists kept in .peers/src (git-ignored,
# never committed; fetched with `pip download --no-deps megablocks==0.10.0
# grouped-gemm==0.3.0 stanford-stk==0.7.1`), into .peers/site for PYTHONPATH.
# A .peers/site carried back from an earlier run is reused as is.
set -u
site=.peers/site
if [ -f "$site/.built" ]; then echo "peers: $site already built"; exit 0; fi
b=/tmp/peers-build
rm -rf "$b" && mkdir -p "$b" "$site"
for t in .peers/src/*.tar.gz; do tar -C "$b" -xzf "$t"; done
# CUDA 13's CUB dropped the debug_synchronous argument that megablocks 0.10.0 still passes
# (cumsum.h); drop it there. No other change to the peer's code.
perl -0pi -e 's/stream,\s*debug_synchronous\)\)/stream))/g' "$b"/megablocks-*/csrc/cumsum.h
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8
(cd "$b"/grouped_gemm-*/ && python3 setup.py build_ext --inplace) >"$b/grouped_gemm.log" 2>&1 &
gg=$!
(cd "$b"/megablocks-*/ && python3 setup.py build_ext --inplace) >"$b/megablocks.log" 2>&1 &
mb=$!
status=0
wait $gg || { echo "grouped_gemm build failed:"; grep -m12 -B2 -A6 "error" "$b/grouped_gemm.log"; status=1; }
wait $mb || { echo "megablocks build failed:"; grep -m12 -B2 -A6 "error" "$b/megablocks.log"; status=1;
  grep -m1 "error" "$b/megablocks.log" | cut -c1-300 > "$site/BUILD_ERROR"; }
cp -r "$b"/stanford_stk-*/stk "$site"/
cp -r "$b"/megablocks-*/megablocks "$site"/ && cp "$b"/megablocks-*/megablocks_ops*.so "$site"/ 2>/dev/null
cp -r "$b"/grouped_gemm-*/grouped_gemm "$site"/ && cp "$b"/grouped_gemm-*/grouped_gemm_backend*.so "$site"/ 2>/dev/null
ls -la "$site"
[ $status -eq 0 ] && touch "$site/.built"
exit $status
