set -u
mkdir -p r
tar -C .gpu-build -xJf .gpu-build/bin.tar.xz
MODELS=mixtral-8x7b,qwen3-30b-a3b,deepseek-v3,gpt-oss-120b TOKENS=1,4,16,64,256,1024,2048,8192 bash scripts/gpu-check.sh > r/check.txt 2>&1
cp -r gpu-check-out r/; tar -C r -czf $OUT/r.tar.gz .
export TMOE_LIBRARY=.gpu-build/libtmoe.so PYTHONPATH=python:.peers/site PYTHONUNBUFFERED=1
bash bench/setup_peers.sh > r/setup.log 2>&1
timeout 300 python3 bench/peers.py --out r/res > r/run.log 2>&1; echo "peers rc $?" >> r/run.log
tar -C r -czf $OUT/r.tar.gz .
grep -E "PASSED|FAILED|ERROR SUMMARY|passed|failed" r/check.txt; tail -2 r/run.log
