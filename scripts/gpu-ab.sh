#!/usr/bin/env bash
# Two builds side by side in one device call (run from the repo root on the GPU
# machine): `tmoe bench` of each model in $MODELS at $TOKENS with build A
# (.gpu-build/a) and build B (.gpu-build), the order alternating over $ROUNDS rounds
# (clocks drift within a call: a fixed order once read as a 2% change,
# performance-log.md #28), on one seed and one tuned table (with HEURISTIC=1 none,
# with EMBEDDED=1 each build's own). Prints, per model and T, A's and B's median
# over the rounds, B/A and both plans; logs in gpu-ab-out and, packed, in $OUT.
# Here, before the call (carry .gpu-build): B is `bash scripts/gpu-pack.sh`; A an
# earlier revision packed the same way, e.g.
#   git worktree add /tmp/a REV && (cd /tmp/a && bash scripts/gpu-pack.sh)
#   mkdir -p .gpu-build/a && cp /tmp/a/.gpu-build/bin.tar.xz .gpu-build/a/
set -u
for dir in .gpu-build/a .gpu-build; do tar -C "$dir" -xJf "$dir/bin.tar.xz" || exit 1; done
out=gpu-ab-out
rm -rf "$out" && mkdir -p "$out"
# Both builds read this tree's table for the card (each embeds its own revision's);
# with HEURISTIC=1 a table of the card with no shapes, so both run their heuristic
# (a heuristic change's A/B, performance-log.md #68, #69).
if [ "${HEURISTIC:-0}" = 1 ]; then
  card=$(.gpu-build/tmoe info | sed -n 's/^backend gpu: device 0: \(.*\) (\([^()]*\))$/"device": "\1", "target": "\2"/p')
  echo "{\"format\": 1, $card, \"shapes\": []}" > "$out/no-shapes.json"
  export TMOE_TUNING_TABLE=$out/no-shapes.json
fi
# EMBEDDED=1 for a change of tiles and table: the older build cannot read a table
# naming tiles it lacks.
table=configs/$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr 'A-Z' 'a-z').json
[ -f "$table" ] && [ "${EMBEDDED:-0}" != 1 ] && export TMOE_TUNING_TABLE=${TMOE_TUNING_TABLE:-$table}
echo "table: ${TMOE_TUNING_TABLE:-none, each build uses its embedded table or the heuristic}" | tee "$out/table.txt"
for round in $(seq 1 "${ROUNDS:-2}"); do
  order="a b"
  [ $((round % 2)) = 0 ] && order="b a"
  for build in $order; do
    bin=.gpu-build
    [ "$build" = a ] && bin=.gpu-build/a
    for model in $(echo "${MODELS:-qwen3-30b-a3b,gpt-oss-120b}" | tr , ' '); do
      "$bin/tmoe" bench --backend gpu --model "$model" --tokens "${TOKENS:-1,16,128,512,2048,8192}" \
        --seed "${SEED:-11}" --check-rows 4 --json "$out/$build-$model-$round.json" >"$out/$build-$model-$round.log" 2>&1 ||
        echo "build $build, $model, round $round: tmoe bench failed (see $out/$build-$model-$round.log)"
    done
  done
done
python3 - "$out" <<'EOF' | tee "$out/ab.txt"
import glob, json, statistics, sys
runs = {}
for path in glob.glob(sys.argv[1] + "/[ab]-*.json"):
    run = json.load(open(path))
    build = path.rsplit("/", 1)[1].split("-", 1)[0]
    for row in run["rows"]:
        runs.setdefault((run["model"], row["T"]), {}).setdefault(build, []).append((row["ms"], row["plan"]))
print(f"{'model':16} {'T':>6} {'A ms':>9} {'B ms':>9} {'B/A':>7}  plans (A | B)")
for (model, T), builds in sorted(runs.items()):
    a, b = (statistics.median(ms for ms, _ in builds.get(x, [(float("nan"), "")])) for x in ("a", "b"))
    plans = " | ".join(builds.get(x, [(0, "-")])[0][1].split(":")[0] for x in ("a", "b"))
    print(f"{model:16} {T:>6} {a:>9.4f} {b:>9.4f} {b / a:>7.3f}  {plans}")
EOF
[ -n "${OUT:-}" ] && tar -C "$out" -czf "$OUT/gpu-ab.tar.gz" .
exit 0
