// CPU emulation of __half for cuda_runtime.h of this folder (see there).
#pragma once
#include "normexport/common.h"
struct __half { uint16_t bits; };
inline float __half2float(__half h) { return normexport::half_bits_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{normexport::float_to_half_bits(f)}; }
