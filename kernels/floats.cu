// CUDA kernels for the float family: F16 and BF16 (F32 is a plain copy and has none). Loaded by the
// CuPy backend (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Elementwise conversions, one element per thread: x float32 [n], out uint8 [2 n] (little-endian
// 16-bit words). The family has no floats.cuh: its conversions (gq_fp32_to_fp16, gq_fp16_to_fp32,
// gq_fp32_to_bf16, gq_bf16_to_fp32) live in common.cuh, since every other family stores its scales
// as fp16 with them; the host build (host_floats.cpp) loops the same functions.
#include "common.cuh"

extern "C" {

__global__ void gq_quantize_f16(const float* __restrict__ x, gq_u8* __restrict__ out, gq_i64 n) {
    const gq_i64 i = gq_thread_index();
    if (i < n) gq_store_u16(out + 2 * i, gq_fp32_to_fp16(x[i]));
}

__global__ void gq_quantize_bf16(const float* __restrict__ x, gq_u8* __restrict__ out, gq_i64 n) {
    const gq_i64 i = gq_thread_index();
    if (i < n) gq_store_u16(out + 2 * i, gq_fp32_to_bf16(x[i]));
}

__global__ void gq_dequantize_f16(const gq_u8* __restrict__ q, float* __restrict__ y, gq_i64 n) {
    const gq_i64 i = gq_thread_index();
    if (i < n) y[i] = gq_fp16_to_fp32(gq_load_u16(q + 2 * i));
}

__global__ void gq_dequantize_bf16(const gq_u8* __restrict__ q, float* __restrict__ y, gq_i64 n) {
    const gq_i64 i = gq_thread_index();
    if (i < n) y[i] = gq_bf16_to_fp32(gq_load_u16(q + 2 * i));
}

}  // extern "C"
