// CUDA kernels for ggml's Q1_0 (128-weight blocks) and Q2_0 (64-weight blocks). Loaded by the CuPy
// backend (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows, so block b of the whole tensor reads x[block_size * b ...] and writes
// out[type_bytes * b ...]; one thread quantizes (or dequantizes) one block with the lowbit.cuh
// functions that the host build (host_lowbit.cpp) also runs. ggml ignores an importance matrix for
// both, so there are no *_imatrix kernels.
#include "lowbit.cuh"

extern "C" {

__global__ void gq_quantize_q2_0(const float* x, gq_u8* out, gq_i64 n_blocks) {
    gq_quantize_in_registers<GQ_Q2_0_BLOCK, GQ_Q2_0_BYTES, gq_quantize_block_q2_0>(x, out, n_blocks);
}

// The 128-weight blocks are read straight from global memory (twice: mean |x|, then signs).
__global__ void gq_quantize_q1_0(const float* x, gq_u8* out, gq_i64 n_blocks) {
    gq_quantize_in_memory<GQ_Q1_0_BLOCK, GQ_Q1_0_BYTES, gq_quantize_block_q1_0>(x, out, n_blocks);
}

// ---------------------------------------------------------------- dequantize kernels

__global__ void gq_dequantize_q2_0(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_registers<GQ_Q2_0_BLOCK, GQ_Q2_0_BYTES, gq_dequantize_block_q2_0>(q, y, n_blocks);
}

__global__ void gq_dequantize_q1_0(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_memory<GQ_Q1_0_BLOCK, GQ_Q1_0_BYTES, gq_dequantize_block_q1_0>(q, y, n_blocks);
}

}  // extern "C"
