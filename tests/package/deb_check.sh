#!/usr/bin/env bash
# `cpack -G DEB` in the build tree gives a Debian package that installs: its dependencies are
# Debian packages apt can resolve (apt-get install --simulate), and the dtrain it unpacks runs and
# trains from its own share/dtrain/configs. Usage: deb_check.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
work=$(mktemp -d /tmp/dtrain-deb-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "deb_check: $*" >&2; exit 1; }

(cd "$build" && cpack -G DEB -B "$work/out" >"$work/cpack.log" 2>&1) || {
  tail -30 "$work/cpack.log"; fail "cpack -G DEB failed"; }
deb=$(find "$work/out" -maxdepth 1 -name 'dtrain_*.deb' | head -1)
[ -n "$deb" ] || fail "cpack wrote no dtrain_*.deb (see $work/cpack.log)"
depends=$(dpkg-deb -f "$deb" Depends)
echo "deb_check: $(basename "$deb"), Depends: $depends"
for lib in libdnnl libprotobuf libyaml-cpp libgomp1; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib"
done
if apt-cache policy >/dev/null 2>&1 && [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ]; then
  apt-get install --simulate -q "$deb" >"$work/apt.log" 2>&1 || {
    tail -20 "$work/apt.log"; fail "apt cannot install $deb"; }
  echo "deb_check: apt-get install --simulate resolves every dependency"
else
  echo "deb_check: no apt package lists on this machine; dependency resolution not checked"
fi

dpkg-deb -x "$deb" "$work/root"
dtrain=$work/root/usr/bin/dtrain
"$dtrain" --version
OMP_NUM_THREADS=1 timeout 120 "$dtrain" train "$work/root/usr/share/dtrain/configs/synthetic_mlp.yaml" \
  train.max_steps=20 train.checkpoint_dir="$work/ckpt" log.dir="$work/logs" >"$work/train.log" 2>&1 || {
  cat "$work/train.log"; fail "the packaged dtrain did not train"; }
grep -q "final" "$work/train.log" || { cat "$work/train.log"; fail "no final line"; }
echo "deb_check: ok"
