#!/bin/sh
# Builds tests/gpu_check.cu with the GroupNorm, FilterResponseNorm and AdaIN CUDA kernels
# against the CPU emulation of this folder (cuda_runtime.h, cuda_fp16.h) and runs it: the
# launchers' results vs gpu_check's float64 references, without a GPU.
#   usage: run.sh OUT_DIR [gpu_check arguments, e.g. GroupNorm]
# Exit status: gpu_check's (0 all PASS, 1 a FAIL, 2 usage); the compiler's on a build error.
# Needs a C++20 compiler with <barrier> ($CXX, default g++ >= 11).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: run.sh OUT_DIR [gpu_check arguments]}
shift
mkdir -p "$out/src"
for f in ops/group_norm/gn_cuda.cu ops/group_norm/gn_nhwc_cuda.cu \
         ops/filter_response_norm/frn_cuda.cu ops/filter_response_norm/frn_nhwc_cuda.cu \
         ops/adain/adain_cuda.cu ops/adain/adain_nhwc_cuda.cu src/cuda_utils.cu tests/gpu_check.cu; do
  # Kernel<D><<<grid, block, shared, stream>>>(args) -> ::emu::Launch(grid, block, ...)(Kernel<D>, args)
  sed 's/\([A-Za-z_]*<D>\)<<<\(.*\)>>>(/::emu::Launch(\2)(\1, /' "$root/$f" > "$out/src/$(echo "$f" | tr / _).cc"
done
${CXX:-g++} -std=c++20 -O2 -pthread -w -I"$here" -I"$root/include" -I"$root/ops" \
  -DNX_GPU_CHECK_GROUP_NORM -DNX_GPU_CHECK_FILTER_RESPONSE_NORM -DNX_GPU_CHECK_ADAIN \
  "$out"/src/*.cc -o "$out/gpu_check_emu"
exec "$out/gpu_check_emu" "$@"
