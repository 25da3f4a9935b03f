// CUDA kernels for ggml's E2M1 4-bit float formats MXFP4 and NVFP4. Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows, so block b of the whole tensor reads x[block_size * b ...] and writes
// out[type_bytes * b ...]. One thread quantizes one block, except NVFP4: one thread per 16-weight
// group (its own scale byte and 8 nibble bytes). The per-block arithmetic is the fp4.cuh functions
// that the host build (host_fp4.cpp) also runs. ggml ignores an importance matrix for both, so there
// are no *_imatrix kernels.
#include "fp4.cuh"

extern "C" {

__global__ void gq_quantize_mxfp4(const float* x, gq_u8* out, gq_i64 n_blocks) {
    gq_quantize_in_registers<GQ_MXFP4_BLOCK, GQ_MXFP4_BYTES, gq_quantize_block_mxfp4>(x, out, n_blocks);
}

// n_groups: 16-weight groups (4 per 64-weight block).
__global__ void gq_quantize_nvfp4(const float* x, gq_u8* out, gq_i64 n_groups) {
    const gq_i64 g = gq_thread_index();
    if (g >= n_groups) return;
    float xg[GQ_NVFP4_SUB];
    gq_load_floats<GQ_NVFP4_SUB>(x + g * GQ_NVFP4_SUB, xg);
    gq_u8 qs[GQ_NVFP4_SUB / 2];
    gq_u8* dst = out + (g >> 2) * GQ_NVFP4_BYTES;
    const int s = (int)(g & 3);
    dst[s] = gq_quantize_group_nvfp4(xg, qs);
    gq_copy_bytes<GQ_NVFP4_SUB / 2>(dst + 4 + (GQ_NVFP4_SUB / 2) * s, qs);
}

// ---------------------------------------------------------------- dequantize kernels

__global__ void gq_dequantize_mxfp4(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_registers<GQ_MXFP4_BLOCK, GQ_MXFP4_BYTES, gq_dequantize_block_mxfp4>(q, y, n_blocks);
}

__global__ void gq_dequantize_nvfp4(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_registers<GQ_NVFP4_BLOCK, GQ_NVFP4_BYTES, gq_dequantize_block_nvfp4>(q, y, n_blocks);
}

}  // extern "C"
