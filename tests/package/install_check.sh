#!/usr/bin/env bash
# The installed package as a user sees it: `cmake --install` into a fresh prefix, then
#  - the layout: bin/dtrain, lib/libdtrain.so, headers under include/dtrain/, no internal headers;
#  - every installed header compiles on its own from the prefix (nothing missing, nothing from the
#    source tree), even with a user's own data/loader.h earlier on the include path;
#  - examples/ builds as an outside project with find_package(dtrain) on the compiler's default
#    C++ standard, and its programs run (the DDP one under mpirun when there is one);
#  - pkg-config --cflags --libs dtrain builds and runs a program.
# Usage: install_check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(realpath "$1")
source=$(realpath "$2")
work=$(mktemp -d /tmp/dtrain-install-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() { echo "install_check: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$work/install.log" || {
  cat "$work/install.log"; fail "cmake --install failed"; }

# Layout.
for f in bin/dtrain lib/libdtrain.so include/dtrain/dtrain.h include/dtrain/version.h \
         include/dtrain/tensor/tensor.h lib/cmake/dtrain/dtrainConfig.cmake \
         lib/pkgconfig/dtrain.pc share/dtrain/configs/fashion_mnist_mlp.yaml \
         share/dtrain/slurm/train.sbatch; do
  [ -e "$prefix/$f" ] || fail "missing $f in the install"
done
internal=$(find "$prefix/include" -path '*backends*' -o -name '*.pb.h' | head -3)
[ -z "$internal" ] || fail "internal headers installed: $internal"
"$prefix/bin/dtrain" --version | grep -q "dtrain" || fail "bin/dtrain --version"
if grep -rn '#include "\(tensor\|autograd\|nn\|data\|distributed\|strategies\|train\|launcher\)/' \
     "$prefix/include/dtrain" >"$work/unprefixed.txt"; then
  head -5 "$work/unprefixed.txt"; fail "installed headers include others without the dtrain/ prefix"
fi
echo "install_check: layout ok ($(find "$prefix/include" -name '*.h' | wc -l) headers)"

# Each header alone, from the prefix only, behind a user's own data/loader.h and nn/layers.h.
mkdir -p "$work/user/data" "$work/user/nn"
echo '#error "the user project'"'"'s data/loader.h was included by dtrain"' >"$work/user/data/loader.h"
echo '#error "the user project'"'"'s nn/layers.h was included by dtrain"' >"$work/user/nn/layers.h"
cxx=${CXX:-c++}
(cd "$prefix/include" && find dtrain -name '*.h' | sort) >"$work/headers.txt"
check_header() {
  echo "#include \"$1\"" | "$cxx" -std=c++20 -fopenmp -fsyntax-only -I"$work/user" \
    -I"$prefix/include" -x c++ - 2>&1 || { echo "^^ $1"; return 1; }
}
export -f check_header
export cxx work prefix
xargs -P "$(nproc)" -I{} bash -c 'check_header {}' <"$work/headers.txt" >"$work/headers.log" || {
  head -40 "$work/headers.log"; fail "an installed header does not compile on its own"; }
echo "install_check: $(wc -l <"$work/headers.txt") headers compile on their own"

# examples/ as an outside project: find_package(dtrain), no CMAKE_CXX_STANDARD of its own.
cmake -S "$source/examples" -B "$work/examples" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/examples.log" 2>&1 || {
  cat "$work/examples.log"; fail "examples/ does not configure against the install"; }
cmake --build "$work/examples" >>"$work/examples.log" 2>&1 || {
  tail -40 "$work/examples.log"; fail "examples/ does not build against the install"; }
# The programs link the installed library, not the build tree.
ldd "$work/examples/power_law" >"$work/ldd.txt"
grep -q "$prefix/lib/libdtrain.so" "$work/ldd.txt" ||
  fail "examples link $(grep dtrain "$work/ldd.txt"), not the installed library"
export OMP_NUM_THREADS=1
for program in power_law mirrored_run grad_accumulation ddp_custom_loop; do
  timeout 120 "$work/examples/$program" || fail "example $program failed"
done
if command -v mpirun >/dev/null; then
  timeout 120 mpirun --allow-run-as-root --oversubscribe -n 2 "$work/examples/ddp_custom_loop" ||
    fail "example ddp_custom_loop failed under mpirun -n 2"
else
  echo "install_check: mpirun not found; ddp_custom_loop ran as one process only"
fi

# pkg-config.
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
cat >"$work/hello.cpp" <<'CPP'
#include <cstdio>
#include <cstring>

#include "dtrain/dtrain.h"

int main() {
  dtrain::Tensor x = dtrain::from_vector<float>({1, 2, 3, 4}, {2, 2});
  const float total = dtrain::sum(x * x).item<float>();
  std::printf("dtrain %s (headers %s): sum of squares %g\n", dtrain::library_version(),
              dtrain::kVersion, total);
  return total == 30.0f && std::strcmp(dtrain::library_version(), dtrain::kVersion) == 0 ? 0 : 1;
}
CPP
# shellcheck disable=SC2046
"$cxx" -O1 "$work/hello.cpp" -o "$work/hello" $(pkg-config --cflags --libs dtrain) ||
  fail "a program built with pkg-config --cflags --libs dtrain did not link"
"$work/hello" || fail "the pkg-config program gave the wrong answer"
echo "install_check: ok"
