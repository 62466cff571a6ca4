// CPU emulation of CUDA's math_constants.h for cuda_runtime.h of this folder (see there):
// the constants the kernels use, with CUDA's bit patterns.
#pragma once
#include <bit>
#include <cstdint>
#define CUDART_INF_F (std::bit_cast<float>(0x7f800000u))
#define CUDART_NAN_F (std::bit_cast<float>(0x7fffffffu))
#define CUDART_INF (std::bit_cast<double>(0x7ff0000000000000ull))
#define CUDART_NAN (std::bit_cast<double>(0xfff8000000000000ull))
