#!/usr/bin/env bash
# Installs dtrain's dependencies from Debian's packages (idempotent; quick when all are present),
# then configures and builds into build/. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache pkg-config clang-format git
  libdnnl-dev                              # GEMM and convolution on the CPU
  libopenmpi-dev openmpi-bin               # mpi backend, mpirun
  libyaml-cpp-dev                          # configs
  libprotobuf-dev protobuf-compiler        # checkpoints, store protocol, TensorBoard events
  libonnx-dev                              # onnx.proto, the schema of dtrain export --format onnx
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev zlib1g-dev
  nlohmann-json3-dev                       # reading safetensors headers (train.init_from)
  dataset-fashion-mnist                    # /usr/share/datasets/fashion-mnist
  fortunes                                 # English text for configs/char_transformer.yaml
  python3 python3-torch python3-numpy      # golden-value fixtures and side-by-side benchmarks
  python3-venv                             # scripts/python_readers.sh (TensorBoard, safetensors readers)
  libopenblas0-pthread                     # BLAS for that PyTorch (the reference libblas3 is ~20x slower)
  slurmctld slurmd slurm-client munge      # a real Slurm on localhost for the slurm tests (scripts/slurm/)
  clang libclang-rt-dev libomp-dev llvm    # sanitizer and libFuzzer builds, clang's OpenMP, llvm-symbolizer
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "${1:-}" = "--no-build" ] && exit 0

cuda_args=()
[ -x /usr/local/cuda/bin/nvcc ] && cuda_args=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_args[@]}" "${launcher[@]}"
cmake --build build -j"$(nproc)"
