// CUDA kernels for ggml's ternary formats TQ1_0 and TQ2_0. Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows, so block b of the whole tensor reads x[256 * b ...] and writes
// out[type_bytes * b ...]; one thread quantizes (or dequantizes) one block with the ternary.cuh
// functions that the host build (host_ternary.cpp) also runs. ggml ignores an importance matrix for
// both, so there are no *_imatrix kernels.
#include "ternary.cuh"

extern "C" {

// The 256-weight blocks are read straight from global memory (twice: max, then quants).
__global__ void gq_quantize_tq1_0(const float* x, gq_u8* out, gq_i64 n_blocks) {
    gq_quantize_in_memory<GQ_TQ_BLOCK, GQ_TQ1_0_BYTES, gq_quantize_block_tq1_0>(x, out, n_blocks);
}

__global__ void gq_quantize_tq2_0(const float* x, gq_u8* out, gq_i64 n_blocks) {
    gq_quantize_in_memory<GQ_TQ_BLOCK, GQ_TQ2_0_BYTES, gq_quantize_block_tq2_0>(x, out, n_blocks);
}

// ---------------------------------------------------------------- dequantize kernels

__global__ void gq_dequantize_tq1_0(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_memory<GQ_TQ_BLOCK, GQ_TQ1_0_BYTES, gq_dequantize_block_tq1_0>(q, y, n_blocks);
}

__global__ void gq_dequantize_tq2_0(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_memory<GQ_TQ_BLOCK, GQ_TQ2_0_BYTES, gq_dequantize_block_tq2_0>(q, y, n_blocks);
}

}  // extern "C"
