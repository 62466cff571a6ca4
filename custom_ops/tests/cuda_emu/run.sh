#!/bin/sh
# Builds tests/gpu_check.cu with the CUDA kernels of GroupNorm, FilterResponseNorm, AdaIN
# (channels first and last), PositionalNorm, SPADE and SwitchableNorm against the CPU
# emulation of this folder (cuda_runtime.h, cuda_fp16.h, math_constants.h) and runs it: the
# launchers' results vs gpu_check's float64 references, without a GPU.
#   usage: run.sh OUT_DIR [gpu_check arguments, e.g. GroupNorm]
# Exit status: gpu_check's (0 all PASS, 1 a FAIL, 2 usage); the compiler's on a build error;
# 4 when a __shared__ declaration is not in the form the rewriting below understands.
# Needs a C++20 compiler with <barrier> ($CXX, default g++ >= 11). One compiler process.
#
# Each .cu is copied to OUT_DIR/src as C++ with two sed rewrites:
#   * Kernel<D><<<grid, block, shared, stream>>>(args)
#       -> ::emu::Launch(grid, block, shared, stream)(Kernel<D>, args)
#     (the launch on one line; the kernel's template argument named D);
#   * after each one-line `__shared__ TYPE a[N], b;` declaration, a call
#       ::emu::PoisonShared(a, b);
#     that fills the variables with 0xff bytes (NaN) once per block, as shared memory holds
#     no defined values when a block starts (see cuda_runtime.h).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: run.sh OUT_DIR [gpu_check arguments]}
shift
mkdir -p "$out/src"
for f in ops/group_norm/gn_cuda.cu ops/group_norm/gn_nhwc_cuda.cu \
         ops/filter_response_norm/frn_cuda.cu ops/filter_response_norm/frn_nhwc_cuda.cu \
         ops/adain/adain_cuda.cu ops/adain/adain_nhwc_cuda.cu ops/positional_norm/pono_cuda.cu \
         ops/spade/spade_cuda.cu ops/switchable_norm/sn_cuda.cu src/cuda_utils.cu tests/gpu_check.cu; do
  dst="$out/src/$(echo "$f" | tr / _).cc"
  sed -e 's/\([A-Za-z_]*<D>\)<<<\(.*\)>>>(/::emu::Launch(\2)(\1, /' \
      -e '/^[[:space:]]*__shared__ [A-Za-z_0-9:]* [^;]*;$/{
p
s/\[[^]]*\]//g
s/^\([[:space:]]*\)__shared__ [A-Za-z_0-9:]* \([^;]*\);$/\1::emu::PoisonShared(\2);/
}' "$root/$f" > "$dst"
  if [ "$(grep -c '__shared__' "$dst")" != "$(grep -c '::emu::PoisonShared(' "$dst")" ] ||
     grep -q '<<<' "$dst"; then
    echo "run.sh: $f: a kernel launch or __shared__ declaration the rewriting does not handle" >&2
    exit 4
  fi
done
${CXX:-g++} -std=c++20 -O2 -pthread -w -I"$here" -I"$root/include" -I"$root/ops" \
  -DNX_GPU_CHECK_GROUP_NORM -DNX_GPU_CHECK_FILTER_RESPONSE_NORM -DNX_GPU_CHECK_ADAIN \
  -DNX_GPU_CHECK_POSITIONAL_NORM -DNX_GPU_CHECK_SPADE -DNX_GPU_CHECK_SWITCHABLE_NORM \
  "$out"/src/*.cc -o "$out/gpu_check_emu"
exec "$out/gpu_check_emu" "$@"
