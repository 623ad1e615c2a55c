# Sourced by the scripts that run on the GPU machine (gpu-check.sh, gpu-peers.sh).
# step NAME CMD...: runs CMD with its output in $out/NAME.log and shows the log's last
# ${TAIL:-25} lines; a step named in $SKIP is left out; a failed step sets status=1.
# After every step $out is packed into $OUT/$pack when the device tool sets OUT (a
# call brings back few files, and one cut off at its time limit still brings back
# the steps so far).
status=0
step() {
  local name=$1; shift
  case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped"; return;; esac
  echo "== $name: $*"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"
  if [ $rc -ne 0 ]; then echo "== $name FAILED (exit $rc)"; status=1; fi
  [ -n "${OUT:-}" ] && tar -C "$out" -czf "$OUT/$pack" .
}
