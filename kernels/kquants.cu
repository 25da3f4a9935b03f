// CUDA kernels for ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Loaded by the CuPy backend
// (gpuquant/backends/cupy/kquants.py) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes].
// Super-blocks never straddle rows (n_per_row is a multiple of 256), so super-block b of the whole
// tensor reads x[256*b ...] and writes out[type_bytes*b ...]. Quantizing: one thread per
// super-block, running ggml's sequential per-super-block code (kquants.cuh); with an importance
// matrix, super-block b uses imatrix[256 * (b % superblocks_per_row) ...] (the matrix covers one
// row; ggml's K-quant statistics, sigma2 included, are per super-block, so no row pass is needed).
// Dequantizing: one thread per 32 weights (8 threads per super-block), coalesced float4 stores.
#include "kquants.cuh"

__device__ __forceinline__ gq_i64 gq_kq_thread_index() {
    return (gq_i64)blockIdx.x * (gq_i64)blockDim.x + (gq_i64)threadIdx.x;
}

__device__ __forceinline__ void gq_kq_store_32(float* __restrict__ dst, const float* src) {
    if ((reinterpret_cast<unsigned long long>(dst) & 15ull) == 0) {
        float4* v = reinterpret_cast<float4*>(dst);
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) v[k] = make_float4(src[4 * k], src[4 * k + 1], src[4 * k + 2], src[4 * k + 3]);
    } else {
        GQ_UNROLL
        for (int k = 0; k < 32; ++k) dst[k] = src[k];
    }
}

// ---------------------------------------------------------------- the formats, as kernel parameters

struct GqQ2_K {
    static constexpr int bytes = GQ_Q2_K_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_superblock_q2_k(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, gq_u8* out) {
        gq_quantize_superblock_q2_k_weighted(x, qw, out);
    }
    static __device__ __forceinline__ void dequantize_part(const gq_u8* in, int part, float* y) {
        gq_dequantize_part_q2_k(in, part, y);
    }
};

struct GqQ3_K {
    static constexpr int bytes = GQ_Q3_K_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_superblock_q3_k(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, gq_u8* out) {
        gq_quantize_superblock_q3_k_weighted(x, qw, out);
    }
    static __device__ __forceinline__ void dequantize_part(const gq_u8* in, int part, float* y) {
        gq_dequantize_part_q3_k(in, part, y);
    }
};

struct GqQ4_K {
    static constexpr int bytes = GQ_Q4_K_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_superblock_q4_k(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, gq_u8* out) {
        gq_quantize_superblock_q4_k_weighted(x, qw, out);
    }
    static __device__ __forceinline__ void dequantize_part(const gq_u8* in, int part, float* y) {
        gq_dequantize_part_q4_k(in, part, y);
    }
};

struct GqQ5_K {
    static constexpr int bytes = GQ_Q5_K_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_superblock_q5_k(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, gq_u8* out) {
        gq_quantize_superblock_q5_k_weighted(x, qw, out);
    }
    static __device__ __forceinline__ void dequantize_part(const gq_u8* in, int part, float* y) {
        gq_dequantize_part_q5_k(in, part, y);
    }
};

struct GqQ6_K {
    static constexpr int bytes = GQ_Q6_K_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_superblock_q6_k(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, gq_u8* out) {
        gq_quantize_superblock_q6_k_weighted(x, qw, out);
    }
    static __device__ __forceinline__ void dequantize_part(const gq_u8* in, int part, float* y) {
        gq_dequantize_part_q6_k(in, part, y);
    }
};

// ---------------------------------------------------------------- kernel bodies

template <class Format>
__device__ __forceinline__ void gq_quantize_superblocks(const float* __restrict__ x, gq_u8* __restrict__ out,
                                                        gq_i64 n_superblocks) {
    const gq_i64 b = gq_kq_thread_index();
    if (b >= n_superblocks) return;
    Format::quantize(x + b * GQ_QK_K, out + b * Format::bytes);
}

template <class Format>
__device__ __forceinline__ void gq_quantize_superblocks_weighted(const float* __restrict__ x,
                                                                 const float* __restrict__ imatrix,
                                                                 gq_u8* __restrict__ out, gq_i64 n_superblocks,
                                                                 gq_i64 superblocks_per_row) {
    const gq_i64 b = gq_kq_thread_index();
    if (b >= n_superblocks) return;
    const gq_i64 in_row = b % superblocks_per_row;
    Format::quantize_weighted(x + b * GQ_QK_K, imatrix + in_row * GQ_QK_K, out + b * Format::bytes);
}

template <class Format>
__device__ __forceinline__ void gq_dequantize_superblocks(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                          gq_i64 n_parts) {
    const gq_i64 t = gq_kq_thread_index();
    if (t >= n_parts) return;
    const gq_i64 b = t / 8;
    float v[32];
    Format::dequantize_part(q + b * Format::bytes, (int)(t - b * 8), v);
    gq_kq_store_32(y + t * 32, v);
}

// ---------------------------------------------------------------- kernels

// Quantize: one thread per super-block; n_superblocks = rows * n_per_row / 256.
extern "C" {

__global__ void gq_quantize_q2_k(const float* x, gq_u8* out, gq_i64 n_superblocks) {
    gq_quantize_superblocks<GqQ2_K>(x, out, n_superblocks);
}
__global__ void gq_quantize_q3_k(const float* x, gq_u8* out, gq_i64 n_superblocks) {
    gq_quantize_superblocks<GqQ3_K>(x, out, n_superblocks);
}
__global__ void gq_quantize_q4_k(const float* x, gq_u8* out, gq_i64 n_superblocks) {
    gq_quantize_superblocks<GqQ4_K>(x, out, n_superblocks);
}
__global__ void gq_quantize_q5_k(const float* x, gq_u8* out, gq_i64 n_superblocks) {
    gq_quantize_superblocks<GqQ5_K>(x, out, n_superblocks);
}
__global__ void gq_quantize_q6_k(const float* x, gq_u8* out, gq_i64 n_superblocks) {
    gq_quantize_superblocks<GqQ6_K>(x, out, n_superblocks);
}

// With an importance matrix of n_per_row floats; superblocks_per_row = n_per_row / 256.
__global__ void gq_quantize_q2_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_superblocks,
                                         gq_i64 superblocks_per_row) {
    gq_quantize_superblocks_weighted<GqQ2_K>(x, imatrix, out, n_superblocks, superblocks_per_row);
}
__global__ void gq_quantize_q3_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_superblocks,
                                         gq_i64 superblocks_per_row) {
    gq_quantize_superblocks_weighted<GqQ3_K>(x, imatrix, out, n_superblocks, superblocks_per_row);
}
__global__ void gq_quantize_q4_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_superblocks,
                                         gq_i64 superblocks_per_row) {
    gq_quantize_superblocks_weighted<GqQ4_K>(x, imatrix, out, n_superblocks, superblocks_per_row);
}
__global__ void gq_quantize_q5_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_superblocks,
                                         gq_i64 superblocks_per_row) {
    gq_quantize_superblocks_weighted<GqQ5_K>(x, imatrix, out, n_superblocks, superblocks_per_row);
}
__global__ void gq_quantize_q6_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_superblocks,
                                         gq_i64 superblocks_per_row) {
    gq_quantize_superblocks_weighted<GqQ6_K>(x, imatrix, out, n_superblocks, superblocks_per_row);
}

// Dequantize: one thread per 32 weights; n_parts = 8 * n_superblocks.
__global__ void gq_dequantize_q2_k(const gq_u8* q, float* y, gq_i64 n_parts) { gq_dequantize_superblocks<GqQ2_K>(q, y, n_parts); }
__global__ void gq_dequantize_q3_k(const gq_u8* q, float* y, gq_i64 n_parts) { gq_dequantize_superblocks<GqQ3_K>(q, y, n_parts); }
__global__ void gq_dequantize_q4_k(const gq_u8* q, float* y, gq_i64 n_parts) { gq_dequantize_superblocks<GqQ4_K>(q, y, n_parts); }
__global__ void gq_dequantize_q5_k(const gq_u8* q, float* y, gq_i64 n_parts) { gq_dequantize_superblocks<GqQ5_K>(q, y, n_parts); }
__global__ void gq_dequantize_q6_k(const gq_u8* q, float* y, gq_i64 n_parts) { gq_dequantize_superblocks<GqQ6_K>(q, y, n_parts); }

}  // extern "C"
