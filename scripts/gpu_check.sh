#!/usr/bin/env bash
# The one-command GPU check (docs/training.md, "Checking a GPU machine").
#   scripts/gpu_check.sh bundle   on a build machine (Debian, CUDA in /usr/local/cuda): builds
#                                 build-gpu/ (Release, portable, CUDA, no MPI) and packs gpu-bundle/:
#                                 the GPU test binaries, dtrain, gpu_gemm_bench, the non-CUDA
#                                 libraries they load, the configs and Fashion-MNIST, under 64 MiB.
#   scripts/gpu_check.sh [run]    on the GPU machine, from the repository root with gpu-bundle/:
#                                 every GPU test, the MLP and CNN trained to their accuracy targets,
#                                 and one throughput table (dtrain against PyTorch and cuBLAS), in
#                                 8 minutes at most. Writes the table to gpu-check-results.md.
# Exit status: 0 all passed; 1 a GPU test failed, an accuracy target was missed or not reached in
# time, or a dtrain program crashed; 2 nothing was run (no driver, no GPU, no bundle, no CUDA
# libraries), with one line saying why.
# Testing this script without a GPU: GPU_CHECK_DEVICE=cpu (train.device and PyTorch's device; the
# figures are then CPU figures and the results say so) with a stand-in nvidia-smi on the PATH;
# GPU_CHECK_BUDGET_S (default 480) bounds the run, GPU_CHECK_WORK (default /tmp/gpu-check) holds
# the unpacked bundle, the runs and the logs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$PWD

bundle_dir=$root/gpu-bundle
build_dir=$root/build-gpu
# What travels with the working tree (tracked and untracked files plus the bundle) is limited.
limit_bytes=$((64 * 1024 * 1024))
# The test binaries that hold GPU tests (tests/CMakeLists.txt, dtrain_add_test_suite) and the
# filter that gives ctest's label gpu.
test_suites=(tensor nn autograd distributed strategies train cli)
gpu_filter='*Cuda*:*Gpu*:*Nccl*'
# Libraries the GPU machine provides itself (its CUDA toolkit, PyTorch's wheels, the driver).
host_libs_re='^(libcuda|libcudart|libcublas|libcublasLt|libnccl|libnvidia-[a-z]*)\.so'
# The C library family, always the host's own.
libc_re='^(libc|libm|libdl|libpthread|librt|libresolv|ld-linux-x86-64|linux-vdso)\.so'
# Fashion-MNIST as Debian's dataset-fashion-mnist installs it.
dataset=/usr/share/datasets/fashion-mnist
dataset_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
  t10k-labels-idx1-ubyte.gz)

say() { echo "gpu_check: $*"; }
die() {
  say "$*" >&2
  exit 1
}
human() {
  awk -v b="$1" 'BEGIN { if (b < 1048576) printf "%.1f KiB", b / 1024; else printf "%.1f MiB", b / 1048576 }'
}

# ---- bundle ------------------------------------------------------------------------------------

# Bytes that travel besides the bundle: tracked files and untracked files git does not ignore.
tree_bytes() {
  git -C "$root" ls-files -z --cached --others --exclude-standard |
    (cd "$root" && xargs -0 -r stat -L -c %s -- 2>/dev/null) | awk '{ s += $1 } END { print s + 0 }'
}

bundle() {
  local tool
  for tool in cmake ninja strip xz ldd tar sha256sum; do
    command -v "$tool" >/dev/null || die "bundle: $tool not found"
  done
  [ -x /usr/local/cuda/bin/nvcc ] || die "bundle: /usr/local/cuda/bin/nvcc not found"
  local lock=()
  if command -v flock >/dev/null; then lock=(flock "${DTRAIN_BUILD_LOCK:-/tmp/dtrain-build.lock}"); fi

  # 1. Configure: portable CPU code (the GPU machine's processor may differ), CUDA on; MPI off
  #    because Open MPI loads its components from its own install prefix, which a copied libmpi
  #    does not have, and the GPU check needs the nccl and local backends only.
  say "configuring $build_dir"
  mkdir -p "$build_dir"
  "${lock[@]}" nice cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DDTRAIN_NATIVE=OFF -DDTRAIN_CUDA=ON -DDTRAIN_MPI=OFF -DDTRAIN_BUILD_TESTS=ON \
    -DDTRAIN_BUILD_BENCH=ON >"$build_dir/configure.log" 2>&1 ||
    die "bundle: cmake failed (see $build_dir/configure.log)"
  local targets=(dtrain_cli gpu_gemm_bench)
  local suite
  for suite in "${test_suites[@]}"; do targets+=("${suite}_tests"); done
  say "building ${targets[*]}"
  "${lock[@]}" nice ninja -C "$build_dir" "${targets[@]}" || die "bundle: the build failed"

  # 2. Stage the binaries, stripped.
  local stage=$build_dir/bundle-stage
  rm -rf "$stage"
  mkdir -p "$stage/bin" "$stage/lib/fallback"
  cp "$build_dir/dtrain" "$build_dir/bench/gpu_gemm_bench" "$stage/bin/"
  for suite in "${test_suites[@]}"; do cp "$build_dir/tests/${suite}_tests" "$stage/bin/"; done
  strip --strip-unneeded "$stage"/bin/*

  # 3. Every library they load (ldd lists the transitive ones) except the C library and what the
  #    GPU machine has itself. libstdc++ and libgcc_s go to lib/fallback: the GPU machine's own
  #    (usually newer) ones are used unless the binaries do not start with them.
  local host_needed=() line name path
  while read -r name path; do
    if [[ $name =~ $libc_re ]]; then continue; fi
    if [[ $name =~ $host_libs_re ]]; then
      host_needed+=("$name")
      continue
    fi
    if [ -z "$path" ] || [ ! -e "$path" ]; then die "bundle: $name is not found here (ldd: '$path')"; fi
    case $name in
      libstdc++.so* | libgcc_s.so*) cp -L "$path" "$stage/lib/fallback/$name" ;;
      *) cp -L "$path" "$stage/lib/$name" ;;
    esac
  done < <(for f in "$stage"/bin/*; do ldd "$f"; done |
    awk '$2 == "=>" { print $1, $3 }' | sort -u)
  strip --strip-unneeded "$stage"/lib/*.so* "$stage"/lib/fallback/*.so* 2>/dev/null
  mapfile -t host_needed < <(printf '%s\n' "${host_needed[@]}" | sort -u)

  # 4. The payload: binaries and libraries in one xz archive (the binaries share most of their
  #    code, which a solid archive stores once).
  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/configs"
  say "compressing the binaries and libraries (xz -9)"
  tar -C "$stage" -cf - bin lib | nice xz -9 -T1 >"$bundle_dir/payload.tar.xz" ||
    die "bundle: compressing the payload failed"
  cp "$root"/configs/fashion_mnist_{mlp,cnn,resnet}.yaml "$bundle_dir/configs/"
  local data_note
  if [ -r "$dataset/${dataset_files[0]}" ]; then
    mkdir -p "$bundle_dir/data/fashion-mnist"
    local f
    for f in "${dataset_files[@]}"; do cp "$dataset/$f" "$bundle_dir/data/fashion-mnist/"; done
    data_note="Fashion-MNIST (all four gzip IDX files of $dataset)"
  else
    data_note="no dataset: $dataset is missing here (the accuracy and throughput runs will say so)"
  fi

  # 5. The manifest: what was built from what, what the GPU machine must provide, and the paths
  #    compiled into the test binaries (the run recreates them as links when they are missing).
  local commit dirty
  commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
  {
    echo "# gpu-bundle for scripts/gpu_check.sh run"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
    echo "commit: $commit ($dirty tracked file(s) modified in the working tree)"
    echo "cmake: -DCMAKE_BUILD_TYPE=Release -DDTRAIN_NATIVE=OFF -DDTRAIN_CUDA=ON -DDTRAIN_MPI=OFF"
    echo "cuda: $(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), architectures 80 90"
    echo "glibc: $(ldd --version | head -1 | awk '{ print $NF }') or newer"
    echo "source_dir: $root"
    echo "build_dir: $build_dir"
    echo "host_libs: ${host_needed[*]}"
    echo "data: $data_note"
    echo "payload:"
    (cd "$stage" && find bin lib -type f -printf '  %p %s\n' | sort)
    echo "files:"
    (cd "$bundle_dir" && find . -type f ! -name MANIFEST -printf '%P\n' | sort |
      xargs sha256sum | sed 's/^/  /')
  } >"$bundle_dir/MANIFEST"

  # 6. The size limit: the bundle alone, and with the working tree that travels beside it.
  local bundle_bytes tree staged_bytes
  bundle_bytes=$(du -sb "$bundle_dir" | cut -f1)
  tree=$(tree_bytes)
  staged_bytes=$(du -sb "$stage" | cut -f1)
  say "sizes:"
  (cd "$bundle_dir" && find . -type f -printf '%s %P\n' | sort -rn |
    while read -r size file; do printf '  %-44s %10s\n' "$file" "$(human "$size")"; done)
  printf '  %-44s %10s (binaries and libraries %s before xz)\n' "gpu-bundle/ total" \
    "$(human "$bundle_bytes")" "$(human "$staged_bytes")"
  printf '  %-44s %10s\n' "working tree (tracked + untracked)" "$(human "$tree")"
  printf '  %-44s %10s of %s\n' "together" "$(human $((bundle_bytes + tree)))" "$(human $limit_bytes)"
  if ((bundle_bytes >= limit_bytes)); then
    die "bundle: gpu-bundle/ is $(human "$bundle_bytes"), over the $(human $limit_bytes) limit"
  fi
  if ((bundle_bytes + tree > limit_bytes)); then
    die "bundle: gpu-bundle/ and the working tree are $(human $((bundle_bytes + tree))) together, over $(human $limit_bytes)"
  fi

  # 7. Self-check: unpacked elsewhere, every binary finds all its libraries in the bundle, CUDA's
  #    folders or the C library, with nothing else on the search path, and dtrain starts.
  local check
  check=$(mktemp -d)
  unpack "$check" || die "bundle: unpacking the payload failed"
  local cuda_path=/usr/local/cuda/lib64:/usr/local/cuda/lib
  local libpath=$check/lib:$check/lib/fallback:$cuda_path
  local bad=0 bin
  for bin in "$check"/bin/*; do
    while read -r name path; do
      [ "$path" = "not" ] && path="not found"
      case $path in
        "$check"/lib/* | /usr/local/cuda/* | /usr/local/cuda-*/*) ;;
        *)
          if ! [[ $name =~ $libc_re ]]; then
            say "self-check: $(basename "$bin") loads $name from '$path'" >&2
            bad=1
          fi
          ;;
      esac
    done < <(env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$libpath" ldd "$bin" |
      awk '$2 == "=>" { print $1, $3 }')
  done
  local version
  version=$(env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$libpath" "$check/bin/dtrain" --version) ||
    bad=1
  env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$libpath" "$check/bin/dtrain" config check \
    "$bundle_dir/configs/fashion_mnist_mlp.yaml" >/dev/null || bad=1
  env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$libpath" "$check/bin/tensor_tests" \
    --gtest_list_tests --gtest_filter="$gpu_filter" >/dev/null || bad=1
  rm -rf "$check"
  ((bad == 0)) || die "bundle: the self-check failed (above)"
  say "self-check: every binary resolves its libraries in the bundle, CUDA or libc; $version starts"
  say "host must provide: ${host_needed[*]} (its CUDA toolkit or PyTorch's nvidia wheels) and the driver"
  say "done: gpu-bundle/ $(human "$bundle_bytes"); on the GPU machine run scripts/gpu_check.sh"
}

# Unpacks the payload into $1 (bin/, lib/), with xz or, where xz is missing, Python's lzma.
unpack() {
  mkdir -p "$1"
  if command -v xz >/dev/null; then
    xz -dc "$bundle_dir/payload.tar.xz" | tar -C "$1" -xf -
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$bundle_dir/payload.tar.xz" "$1"
  fi
}

# ---- run ---------------------------------------------------------------------------------------

refuse() {
  echo "gpu_check: not run: $*" >&2
  exit 2
}

manifest() { sed -n "s/^$1: //p" "$bundle_dir/MANIFEST"; }

# The folder holding $1 among the GPU machine's CUDA folders and Python's nvidia/torch packages;
# nothing when the dynamic loader finds it already.
find_host_lib() {
  if ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$1 "; then return 0; fi
  local dirs=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib
    /usr/local/nvidia/lib64 /usr/local/nvidia/lib)
  local sp
  if command -v python3 >/dev/null; then
    while read -r sp; do
      [ -d "$sp" ] || continue
      dirs+=("$sp"/nvidia/*/lib "$sp"/nvidia/cu*/lib "$sp"/torch/lib)
    done < <(python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null)
  fi
  local d
  for d in "${dirs[@]}"; do
    if [ -e "$d/$1" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

run_check() {
  # 1. Refuse at once where nothing can run.
  command -v nvidia-smi >/dev/null || refuse "no GPU: nvidia-smi not found (no NVIDIA driver)"
  local gpus
  gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) ||
    refuse "no GPU: nvidia-smi failed: $(echo "$gpus" | head -1)"
  [ -n "$gpus" ] || refuse "no GPU: nvidia-smi lists no device"
  if [ ! -f "$bundle_dir/MANIFEST" ] || [ ! -f "$bundle_dir/payload.tar.xz" ]; then
    refuse "no gpu-bundle/ in $root (make it with scripts/gpu_check.sh bundle and bring it here)"
  fi
  command -v timeout >/dev/null || refuse "timeout (coreutils) not found"

  local start=$SECONDS budget=${GPU_CHECK_BUDGET_S:-480} device=${GPU_CHECK_DEVICE:-cuda}
  local deadline=$((start + budget))
  local work=${GPU_CHECK_WORK:-/tmp/gpu-check}
  local logs=$work/logs
  rm -rf "$logs"
  mkdir -p "$logs"

  # 2. Unpack (again only when the payload changed) and find the CUDA libraries.
  local stamp
  stamp=$(sha256sum <"$bundle_dir/payload.tar.xz" | cut -c1-16)
  if [ "$(cat "$work/bundle/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$work/bundle"
    unpack "$work/bundle" || refuse "gpu-bundle/payload.tar.xz could not be unpacked"
    echo "$stamp" >"$work/bundle/.stamp"
  fi
  local bin=$work/bundle/bin libpath=$work/bundle/lib lib dir
  for lib in $(manifest host_libs); do
    dir=$(find_host_lib "$lib") ||
      refuse "$lib not found (not in /usr/local/cuda, the loader's cache or Python's nvidia/torch packages)"
    if [ -n "$dir" ] && [[ ":$libpath:" != *":$dir:"* ]]; then libpath=$libpath:$dir; fi
  done
  # cuDNN is optional (dtrain opens it at run time and falls back to im2col + cuBLAS without it),
  # so its directory joins the path where it is found and its absence refuses nothing.
  if dir=$(find_host_lib libcudnn.so.9) && [ -n "$dir" ] && [[ ":$libpath:" != *":$dir:"* ]]; then
    libpath=$libpath:$dir
  fi
  export LD_LIBRARY_PATH=$libpath
  local started
  if ! started=$("$bin/dtrain" --version 2>&1); then
    # The host's libstdc++ is older than the build machine's: take the bundled one.
    LD_LIBRARY_PATH=$libpath:$work/bundle/lib/fallback
    export LD_LIBRARY_PATH
    started=$("$bin/dtrain" --version 2>&1) ||
      refuse "the bundled dtrain does not start: $(echo "$started" | head -1)"
  fi
  export NCCL_SOCKET_IFNAME=lo OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

  # The test binaries carry the paths they were built at (fixtures, the dtrain executable):
  # where those are missing here, links stand in for them.
  local src build
  src=$(manifest source_dir)
  build=$(manifest build_dir)
  if [ "$src" != "$root" ] && [ ! -e "$src" ]; then
    mkdir -p "$(dirname "$src")" && ln -s "$root" "$src" &&
      say "linked $src -> $root (the path the tests were built at)"
  fi
  if [ -n "$build" ] && [ ! -e "$build/dtrain" ]; then
    mkdir -p "$build" 2>/dev/null && ln -sf "$bin/dtrain" "$build/dtrain" 2>/dev/null
  fi

  local commit
  commit=$(manifest commit)
  say "GPU: $(echo "$gpus" | head -1); $started; bundle of commit $commit"
  say "logs in $logs; budget ${budget} s"
  local failures=()

  # Runs "$@" bounded by min(cap, what is left of the budget), noting the bound in last_cap;
  # 125 when the budget is spent.
  local last_cap=0
  bounded() {
    local cap=$1
    shift
    local left=$((deadline - SECONDS))
    ((left < cap)) && cap=$left
    last_cap=$cap
    ((cap >= 5)) || return 125
    timeout -k 10 "$cap" "$@"
  }

  # 3. Every GPU test.
  local suite rc out passed failed skipped total_pass=0 total_fail=0 total_skip=0
  local tests_summary=()
  # The last entry runs the convolution tests again with cuDNN switched off by DTRAIN_CUDNN=0, the
  # way a user forces the im2col + cuBLAS path.
  local binary filter cudnn_env
  for suite in "${test_suites[@]}" tensor_without_cudnn; do
    binary=$suite filter=$gpu_filter cudnn_env=()
    if [ "$suite" = tensor_without_cudnn ]; then
      binary=tensor filter='*CudaConv*:CudnnSwitch.*' cudnn_env=(DTRAIN_CUDNN=0)
    fi
    out=$logs/${suite}_tests.log
    bounded 120 env "${cudnn_env[@]}" "$bin/${binary}_tests" --gtest_filter="$filter" \
      --gtest_color=no >"$out" 2>&1
    rc=$?
    passed=$(grep -c '^\[       OK \] ' "$out")
    failed=$(grep -cE '^\[  FAILED  \] [^ ]+ \([0-9]+ ms\)$' "$out")
    skipped=$(grep -cE '^\[  SKIPPED \] [^ ]+ \([0-9]+ ms\)$' "$out")
    total_pass=$((total_pass + passed)) total_fail=$((total_fail + failed))
    total_skip=$((total_skip + skipped))
    local note=""
    if ((rc == 125)); then
      note=" not run: the budget was spent"
      failures+=("${suite}_tests not run (budget)")
    elif ((rc == 124 || rc == 137)); then
      note=" TIMED OUT (log: $out)"
      failures+=("${suite}_tests timed out")
    elif ((rc != 0)); then
      note=" exit $rc (log: $out)"
      failures+=("${suite}_tests: $failed failed, exit $rc")
    fi
    tests_summary+=("${suite}_tests: $passed passed, $failed failed, $skipped skipped$note")
    say "${tests_summary[-1]}"
    grep -E '^\[  FAILED  \] [^ ]+ \([0-9]+ ms\)$' "$out" | sed 's/^/    /'
  done

  # dtrain training runs: config, overrides; prints the final line's fields, or why not.
  local data=$bundle_dir/data/fashion-mnist runs=$work/runs
  rm -rf "$runs"
  dtrain_run() {
    local name=$1 cap=$2 config=$3
    shift 3
    local dir=$runs/$name
    mkdir -p "$dir"
    bounded "$cap" "$bin/dtrain" train "$bundle_dir/configs/$config" "train.device=$device" \
      "data.path=$data" train.resume=never "train.checkpoint_dir=$dir/ck" "log.dir=$dir/log" \
      log.progress=off train.checkpoint_every_steps=0 "$@" >"$logs/$name.log" 2>&1
  }
  final_field() { sed -n "s/^final: .*$1=\([0-9.]*\).*/\1/p" "$logs/$2.log" | tail -1; }
  # Why the last bounded run gave no figure, from its status.
  why_not() {
    case $1 in
      125) echo "not measured: the ${budget}-second budget was spent" ;;
      124 | 137) echo "not measured: timed out after $last_cap s" ;;
      *) echo "not measured: dtrain exited $1 (log: $logs/$2.log)" ;;
    esac
  }
  is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
  unit() { if is_number "$1"; then echo "$2"; fi; }
  local have_data=1
  [ -r "$data/train-images-idx3-ubyte.gz" ] || have_data=0

  # 4. GEMM: dtrain's matmul against cuBLAS, fp32 and bf16.
  local gemm_log=$logs/gemm.log gemm_note=""
  bounded 90 "$bin/gpu_gemm_bench" --n 4096 --iters 20 --warmup 3 >"$gemm_log" 2>&1
  rc=$?
  if ((rc != 0)); then
    gemm_note=$(why_not "$rc" gemm | sed "s/dtrain exited/gpu_gemm_bench exited/")
    ((rc == 125 || rc == 124 || rc == 137)) || failures+=("gpu_gemm_bench exited $rc")
  fi
  gemm() { sed -n "s/^gemm dtype=$1 impl=$2 .* tflops=\([0-9.]*\) .*/\1/p" "$gemm_log"; }

  # 5. Throughput: a fixed number of steps of each model on the GPU (dtrain's final line).
  local kinds=(mlp cnn resnet) kind
  declare -A steps=([mlp]=2000 [cnn]=1000 [resnet]=300) batch=([mlp]=64 [cnn]=64 [resnet]=128)
  declare -A ours=() theirs=() flops=()
  for kind in "${kinds[@]}"; do
    if ((have_data == 0)); then
      ours[$kind]="not measured: no dataset in gpu-bundle/"
      continue
    fi
    dtrain_run "speed_$kind" 60 "fashion_mnist_$kind.yaml" "train.max_steps=${steps[$kind]}"
    rc=$?
    if ((rc == 0)) && [ -n "$(final_field samples_per_sec "speed_$kind")" ]; then
      ours[$kind]=$(final_field samples_per_sec "speed_$kind")
      flops[$kind]=$(final_field gflops "speed_$kind")
    else
      ours[$kind]=$(why_not "$rc" "speed_$kind")
      ((rc == 125 || rc == 124 || rc == 137)) || failures+=("dtrain $kind throughput run exited $rc")
    fi
    say "dtrain $kind on $device: ${ours[$kind]}$(unit "${ours[$kind]}" " samples/s")${flops[$kind]:+, ${flops[$kind]} GFLOP/s of matrix products}"
  done

  # 6. The accuracy runs: the full configs on the GPU against their targets. Targets: the MLP's
  #    is tests/cli/accuracy_test.cpp's (published baseline 0.883), the CNN's the published
  #    two-conv CNN's in its config header (0.916); docs/training.md's CPU runs reached 0.8927 and
  #    0.9246.
  declare -A target=([mlp]=0.885 [cnn]=0.916) cpu_ref=([mlp]=0.8927 [cnn]=0.9246) cap=([mlp]=100 [cnn]=200)
  local accuracy_lines=() acc wall
  for kind in mlp cnn; do
    local line
    if ((have_data == 0)); then
      line="$kind: not measured: no dataset in gpu-bundle/"
      failures+=("$kind accuracy not measured")
    else
      dtrain_run "accuracy_$kind" "${cap[$kind]}" "fashion_mnist_$kind.yaml"
      rc=$?
      acc=$(final_field test_accuracy "accuracy_$kind")
      wall=$(final_field wall_s "accuracy_$kind")
      if ((rc == 0)) && [ -n "$acc" ]; then
        if awk -v a="$acc" -v t="${target[$kind]}" 'BEGIN { exit !(a >= t) }'; then
          line="$kind: test accuracy $acc >= target ${target[$kind]} (CPU run: ${cpu_ref[$kind]}), ${wall} s on $device: passed"
        else
          line="$kind: test accuracy $acc < target ${target[$kind]} (CPU run: ${cpu_ref[$kind]}): MISSED"
          failures+=("$kind accuracy $acc < ${target[$kind]}")
        fi
      else
        line="$kind: $(why_not "$rc" "accuracy_$kind")"
        failures+=("$kind accuracy ${line#*: }")
      fi
    fi
    accuracy_lines+=("$line")
    say "$line"
  done

  # 7. PyTorch on the same GPU, same models, batch sizes and step counts (whatever time is left).
  local torch_why="" torch_log=$logs/pytorch.log
  if ! command -v python3 >/dev/null; then
    torch_why="not measured: no python3"
  elif ! torch_why=$(env -u LD_LIBRARY_PATH python3 -c 'import torch, numpy, sys
sys.exit(0) if sys.argv[1] == "cpu" or torch.cuda.is_available() else print("torch " + torch.__version__ + " sees no GPU")' "$device" 2>&1); then
    torch_why="not measured: python3 has no PyTorch with CUDA ($(echo "$torch_why" | tail -1))"
  elif [ -n "$torch_why" ]; then
    torch_why="not measured: $torch_why"
  elif ((have_data == 0)); then
    torch_why="not measured: no dataset in gpu-bundle/"
  fi
  for kind in "${kinds[@]}"; do
    if [ -n "$torch_why" ]; then
      theirs[$kind]=$torch_why
      continue
    fi
    bounded 60 env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 python3 "$root/bench/train_vs_pytorch.py" \
      --pytorch-only --device "$device" --threads 4 --rounds 1 --kinds "$kind" --steps "${steps[$kind]}" \
      --data "$data" >>"$torch_log" 2>&1
    rc=$?
    local rate
    rate=$(sed -n "s/^pytorch $kind samples_per_sec=\([0-9.]*\)$/\1/p" "$torch_log" | tail -1)
    if ((rc == 0)) && [ -n "$rate" ]; then
      theirs[$kind]=$rate
    else
      theirs[$kind]=$(why_not "$rc" pytorch | sed 's/dtrain exited/train_vs_pytorch.py exited/')
    fi
    say "PyTorch $kind on $device: ${theirs[$kind]}$(unit "${theirs[$kind]}" " samples/s")"
  done

  # 8. The table, printed and written to gpu-check-results.md.
  ratio() {
    if is_number "$1" && is_number "$2"; then
      awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "—" }'
    else
      echo "—"
    fi
  }
  fmt() { if is_number "$1"; then printf '%.0f' "$1"; else echo "$1"; fi; }
  fmt2() { if is_number "$1"; then printf '%.1f' "$1"; else echo "$1"; fi; }
  local gpu_name label row
  gpu_name=$(echo "$gpus" | head -1 | cut -d, -f1)
  local results=$root/gpu-check-results.md
  {
    if [ "$device" != cuda ]; then
      echo "**GPU_CHECK_DEVICE=$device: a test of the script; these are not GPU figures.**"
      echo
    fi
    local torch_version
    torch_version=$(env -u LD_LIBRARY_PATH python3 -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
      torch_version="(none)"
    echo "Measured by \`scripts/gpu_check.sh\` on one $gpu_name ($(echo "$gpus" | head -1 | cut -d, -f2- | sed 's/^ //')),"
    echo "$(date -u +%Y-%m-%d), bundle of commit $commit."
    echo "- dtrain: samples/s over the whole run from its \`final:\` line (the first steps and cuBLAS"
    echo "  start-up included), batches copied from the host each step."
    echo "- PyTorch $torch_version: the same models, batch sizes and step counts, timed after 10 warm-up"
    echo "  steps (the ResNet without random crops and flips)."
    echo "- GEMM: 4096x4096x4096 on float32 tensors, mean of 20 after 3 warm-ups; bf16 is dtrain's"
    echo "  matmul under \`MatmulPrecisionGuard(kBFloat16)\` (rounding both operands included) against"
    echo "  \`cublasGemmEx\` on bf16 operands with float32 accumulation."
    echo
    echo "| measurement | dtrain | reference | reference is | dtrain / reference |"
    echo "| --- | ---: | ---: | --- | ---: |"
    for kind in "${kinds[@]}"; do
      case $kind in
        mlp) label="MLP (fashion_mnist_mlp.yaml)" ;;
        cnn) label="CNN (fashion_mnist_cnn.yaml)" ;;
        resnet) label="ResNet (fashion_mnist_resnet.yaml)" ;;
      esac
      row="| $label, batch ${batch[$kind]}, ${steps[$kind]} steps: samples/s"
      echo "$row | $(fmt "${ours[$kind]}") | $(fmt "${theirs[$kind]}") | PyTorch, same GPU | $(ratio "${ours[$kind]}" "${theirs[$kind]}") |"
    done
    local dt impl_ours impl_ref
    for dt in fp32 bf16; do
      impl_ours=$(gemm "$dt" dtrain)
      impl_ref=$(gemm "$dt" cublas)
      [ -n "$impl_ours" ] || impl_ours=${gemm_note:-not measured: no line from gpu_gemm_bench}
      [ -n "$impl_ref" ] || impl_ref=${gemm_note:-not measured: no line from gpu_gemm_bench}
      local ref_name="cublasSgemm"
      [ "$dt" = bf16 ] && ref_name="cublasGemmEx (bf16 in, fp32 out)"
      echo "| GEMM 4096³ $dt: TFLOP/s | $(fmt2 "$impl_ours") | $(fmt2 "$impl_ref") | $ref_name | $(ratio "$impl_ours" "$impl_ref") |"
    done
    echo
    local matrix_rates=()
    for kind in "${kinds[@]}"; do
      [ -n "${flops[$kind]:-}" ] && matrix_rates+=("$kind ${flops[$kind]}")
    done
    if ((${#matrix_rates[@]})); then
      echo "dtrain's matrix products in those runs, GFLOP/s (the final line's \`gflops\`: GEMMs and"
      echo "convolutions, 2 per multiply-add, for the share of the GPU's peak): $(printf '%s; ' "${matrix_rates[@]}" | sed 's/; $//')."
      echo
    fi
    echo "GPU tests (\`--gtest_filter='$gpu_filter'\`): $total_pass passed, $total_fail failed, $total_skip skipped."
    echo "Accuracy (full configs, train.device=$device): $(printf '%s; ' "${accuracy_lines[@]}" | sed 's/; $//')."

  } >"$results"
  echo
  cat "$results"
  echo
  say "took $((SECONDS - start)) s; the table is in gpu-check-results.md, logs in $logs"
  if ((${#failures[@]})); then
    say "FAILED: $(printf '%s; ' "${failures[@]}" | sed 's/; $//')"
    exit 1
  fi
  say "passed"
}

case "${1:-run}" in
  bundle) bundle ;;
  run) run_check ;;
  -h | --help | help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "usage: scripts/gpu_check.sh [bundle | run]" >&2
    exit 2
    ;;
esac
