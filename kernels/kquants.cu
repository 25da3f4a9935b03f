// CUDA kernels for ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes].
// Super-blocks never straddle rows (n_per_row is a multiple of 256), so super-block b of the whole
// tensor reads x[256*b ...] and writes out[type_bytes*b ...]. Quantizing: one thread per
// super-block, running ggml's sequential per-super-block code (kquants.cuh); with an importance
// matrix, super-block b uses imatrix[256 * (b % superblocks_per_row) ...] (the matrix covers one
// row; ggml's K-quant statistics, sigma2 included, are per super-block, so no row pass is needed).
// Dequantizing: one thread per 32 weights (8 threads per super-block), coalesced float4 stores.
#include "kquants.cuh"

// ---------------------------------------------------------------- kernel bodies
// Each takes the super-block functions of kquants.cuh of one type as template arguments.

template <int Bytes, void (*QuantizeWeighted)(const float*, const float*, gq_u8*)>
__device__ __forceinline__ void gq_quantize_superblocks_weighted(const float* __restrict__ x,
                                                                 const float* __restrict__ imatrix,
                                                                 gq_u8* __restrict__ out, gq_i64 n_superblocks,
                                                                 gq_i64 superblocks_per_row) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_superblocks) return;
    const gq_i64 in_row = b % superblocks_per_row;
    QuantizeWeighted(x + b * GQ_QK_K, imatrix + in_row * GQ_QK_K, out + b * Bytes);
}

template <int Bytes, void (*DequantizePart)(const gq_u8*, int, float*)>
__device__ __forceinline__ void gq_dequantize_superblocks(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                          gq_i64 n_parts) {
    const gq_i64 t = gq_thread_index();
    if (t >= n_parts) return;
    const gq_i64 b = t / 8;
    float v[32];
    DequantizePart(q + b * Bytes, (int)(t - b * 8), v);
    gq_store_floats<32>(y + t * 32, v);
}

// ---------------------------------------------------------------- kernels

// The three kernels of type t (q2_k ... q6_k), named gq_quantize_<t>, gq_quantize_<t>_imatrix and
// gq_dequantize_<t>:
//   quantize: one thread per super-block; n_superblocks = rows * n_per_row / 256;
//   quantize with an importance matrix of n_per_row floats: superblocks_per_row = n_per_row / 256;
//   dequantize: one thread per 32 weights; n_parts = 8 * n_superblocks.
#define GQ_KQUANT_KERNELS(t, BYTES)                                                               \
    __global__ void gq_quantize_##t(const float* x, gq_u8* out, gq_i64 n_superblocks) {           \
        gq_quantize_in_memory<GQ_QK_K, BYTES, gq_quantize_superblock_##t>(x, out, n_superblocks); \
    }                                                                                             \
    __global__ void gq_quantize_##t##_imatrix(const float* x, const float* imatrix, gq_u8* out,   \
                                              gq_i64 n_superblocks, gq_i64 superblocks_per_row) { \
        gq_quantize_superblocks_weighted<BYTES, gq_quantize_superblock_##t##_weighted>(           \
            x, imatrix, out, n_superblocks, superblocks_per_row);                                 \
    }                                                                                             \
    __global__ void gq_dequantize_##t(const gq_u8* q, float* y, gq_i64 n_parts) {                 \
        gq_dequantize_superblocks<BYTES, gq_dequantize_part_##t>(q, y, n_parts);                  \
    }

extern "C" {
GQ_KQUANT_KERNELS(q2_k, GQ_Q2_K_BYTES)
GQ_KQUANT_KERNELS(q3_k, GQ_Q3_K_BYTES)
GQ_KQUANT_KERNELS(q4_k, GQ_Q4_K_BYTES)
GQ_KQUANT_KERNELS(q5_k, GQ_Q5_K_BYTES)
GQ_KQUANT_KERNELS(q6_k, GQ_Q6_K_BYTES)
}  // extern "C"
