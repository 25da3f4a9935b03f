// CUDA kernels for F16, BF16 and ggml's legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
// Loaded by the CuPy backend (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows (n_per_row is a multiple of 32), so block b of the whole tensor reads
// x[32*b ...] and writes out[type_bytes*b ...]; one thread quantizes one block.
//
// With an importance matrix, the row's mean square sigma2 must be ready first: gq_row_sigma2 fills
// it (one warp per 32 rows, each lane summing its own row in order), then the *_imatrix kernel runs.
#include "legacy.cuh"

// ---------------------------------------------------------------- loads and stores

// 32 consecutive floats into registers: vector loads when the tensor is 16-byte aligned (every
// block then is, as blocks are 128 bytes), scalar loads otherwise.
__device__ __forceinline__ void gq_load_32(const float* __restrict__ src, float* dst) {
    if ((reinterpret_cast<unsigned long long>(src) & 15ull) == 0) {
        const float4* v = reinterpret_cast<const float4*>(src);
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) {
            const float4 f = v[k];
            dst[4 * k + 0] = f.x;
            dst[4 * k + 1] = f.y;
            dst[4 * k + 2] = f.z;
            dst[4 * k + 3] = f.w;
        }
    } else {
        GQ_UNROLL
        for (int k = 0; k < 32; ++k) dst[k] = src[k];
    }
}

__device__ __forceinline__ void gq_store_32(float* __restrict__ dst, const float* src) {
    if ((reinterpret_cast<unsigned long long>(dst) & 15ull) == 0) {
        float4* v = reinterpret_cast<float4*>(dst);
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) v[k] = make_float4(src[4 * k], src[4 * k + 1], src[4 * k + 2], src[4 * k + 3]);
    } else {
        GQ_UNROLL
        for (int k = 0; k < 32; ++k) dst[k] = src[k];
    }
}

__device__ __forceinline__ gq_i64 gq_thread_index() {
    return (gq_i64)blockIdx.x * (gq_i64)blockDim.x + (gq_i64)threadIdx.x;
}

// ---------------------------------------------------------------- the formats, as kernel parameters

struct GqQ4_0 {
    static constexpr int bytes = GQ_Q4_0_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_block_q4_0(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
        gq_quantize_block_q4_0_weighted(x, qw, sigma2, out);
    }
    static __device__ __forceinline__ void dequantize(const gq_u8* in, float* y) { gq_dequantize_block_q4_0(in, y); }
};

struct GqQ4_1 {
    static constexpr int bytes = GQ_Q4_1_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_block_q4_1(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
        gq_quantize_block_q4_1_weighted(x, qw, sigma2, out);
    }
    static __device__ __forceinline__ void dequantize(const gq_u8* in, float* y) { gq_dequantize_block_q4_1(in, y); }
};

struct GqQ5_0 {
    static constexpr int bytes = GQ_Q5_0_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_block_q5_0(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
        gq_quantize_block_q5_0_weighted(x, qw, sigma2, out);
    }
    static __device__ __forceinline__ void dequantize(const gq_u8* in, float* y) { gq_dequantize_block_q5_0(in, y); }
};

struct GqQ5_1 {
    static constexpr int bytes = GQ_Q5_1_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_block_q5_1(x, out); }
    static __device__ __forceinline__ void quantize_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
        gq_quantize_block_q5_1_weighted(x, qw, sigma2, out);
    }
    static __device__ __forceinline__ void dequantize(const gq_u8* in, float* y) { gq_dequantize_block_q5_1(in, y); }
};

struct GqQ8_0 {
    static constexpr int bytes = GQ_Q8_0_BYTES;
    static __device__ __forceinline__ void quantize(const float* x, gq_u8* out) { gq_quantize_block_q8_0(x, out); }
    static __device__ __forceinline__ void dequantize(const gq_u8* in, float* y) { gq_dequantize_block_q8_0(in, y); }
};

// ---------------------------------------------------------------- kernel bodies

template <class Format>
__device__ __forceinline__ void gq_quantize_blocks(const float* __restrict__ x, gq_u8* __restrict__ out,
                                                   gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    float xb[GQ_QK];
    gq_load_32(x + b * GQ_QK, xb);
    gq_u8 qb[Format::bytes];
    Format::quantize(xb, qb);
    gq_u8* dst = out + b * Format::bytes;
    GQ_UNROLL
    for (int k = 0; k < Format::bytes; ++k) dst[k] = qb[k];
}

template <class Format>
__device__ __forceinline__ void gq_quantize_blocks_weighted(const float* __restrict__ x,
                                                            const float* __restrict__ imatrix,
                                                            const float* __restrict__ sigma2,
                                                            gq_u8* __restrict__ out, gq_i64 n_blocks,
                                                            gq_i64 blocks_per_row) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    const gq_i64 row = b / blocks_per_row;
    const gq_i64 block_in_row = b - row * blocks_per_row;
    float xb[GQ_QK];
    float qw[GQ_QK];
    gq_load_32(x + b * GQ_QK, xb);
    gq_load_32(imatrix + block_in_row * GQ_QK, qw);
    gq_u8 qb[Format::bytes];
    Format::quantize_weighted(xb, qw, sigma2[row], qb);
    gq_u8* dst = out + b * Format::bytes;
    GQ_UNROLL
    for (int k = 0; k < Format::bytes; ++k) dst[k] = qb[k];
}

template <class Format>
__device__ __forceinline__ void gq_dequantize_blocks(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                     gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    gq_u8 qb[Format::bytes];
    const gq_u8* src = q + b * Format::bytes;
    GQ_UNROLL
    for (int k = 0; k < Format::bytes; ++k) qb[k] = src[k];
    float yb[GQ_QK];
    Format::dequantize(qb, yb);
    gq_store_32(y + b * GQ_QK, yb);
}

// ---------------------------------------------------------------- kernels

extern "C" {

// sigma2[r] = (sum over row r of x*x, added in order) / n_per_row, as ggml's *_impl quantizers
// compute it. Launch with blockDim.x == 32 and one block per 32 rows: the warp reads a 32x32 tile
// with coalesced loads, transposes it through shared memory, and each lane adds its own row.
__global__ void gq_row_sigma2(const float* __restrict__ x, float* __restrict__ sigma2, gq_i64 nrows,
                              gq_i64 n_per_row) {
    __shared__ float tile[32][33];  // 33: a column read touches 32 different banks
    const int lane = threadIdx.x;
    const gq_i64 row0 = (gq_i64)blockIdx.x * 32;
    float sum = 0.0f;
    for (gq_i64 c0 = 0; c0 < n_per_row; c0 += 32) {
        const gq_i64 col = c0 + lane;
        for (int r = 0; r < 32; ++r) {
            const gq_i64 row = row0 + r;
            tile[r][lane] = (row < nrows && col < n_per_row) ? x[row * n_per_row + col] : 0.0f;
        }
        __syncwarp();
        // Padding zeros past the row's end add exactly nothing to a non-negative sum.
        GQ_UNROLL
        for (int j = 0; j < 32; ++j) {
            const float v = tile[lane][j];
            sum += v * v;
        }
        __syncwarp();
    }
    const gq_i64 my_row = row0 + lane;
    if (my_row < nrows) sigma2[my_row] = sum / (float)n_per_row;
}

__global__ void gq_quantize_q4_0(const float* x, gq_u8* out, gq_i64 n_blocks) { gq_quantize_blocks<GqQ4_0>(x, out, n_blocks); }
__global__ void gq_quantize_q4_1(const float* x, gq_u8* out, gq_i64 n_blocks) { gq_quantize_blocks<GqQ4_1>(x, out, n_blocks); }
__global__ void gq_quantize_q5_0(const float* x, gq_u8* out, gq_i64 n_blocks) { gq_quantize_blocks<GqQ5_0>(x, out, n_blocks); }
__global__ void gq_quantize_q5_1(const float* x, gq_u8* out, gq_i64 n_blocks) { gq_quantize_blocks<GqQ5_1>(x, out, n_blocks); }
__global__ void gq_quantize_q8_0(const float* x, gq_u8* out, gq_i64 n_blocks) { gq_quantize_blocks<GqQ8_0>(x, out, n_blocks); }

__global__ void gq_quantize_q4_0_imatrix(const float* x, const float* imatrix, const float* sigma2, gq_u8* out,
                                         gq_i64 n_blocks, gq_i64 blocks_per_row) {
    gq_quantize_blocks_weighted<GqQ4_0>(x, imatrix, sigma2, out, n_blocks, blocks_per_row);
}
__global__ void gq_quantize_q4_1_imatrix(const float* x, const float* imatrix, const float* sigma2, gq_u8* out,
                                         gq_i64 n_blocks, gq_i64 blocks_per_row) {
    gq_quantize_blocks_weighted<GqQ4_1>(x, imatrix, sigma2, out, n_blocks, blocks_per_row);
}
__global__ void gq_quantize_q5_0_imatrix(const float* x, const float* imatrix, const float* sigma2, gq_u8* out,
                                         gq_i64 n_blocks, gq_i64 blocks_per_row) {
    gq_quantize_blocks_weighted<GqQ5_0>(x, imatrix, sigma2, out, n_blocks, blocks_per_row);
}
__global__ void gq_quantize_q5_1_imatrix(const float* x, const float* imatrix, const float* sigma2, gq_u8* out,
                                         gq_i64 n_blocks, gq_i64 blocks_per_row) {
    gq_quantize_blocks_weighted<GqQ5_1>(x, imatrix, sigma2, out, n_blocks, blocks_per_row);
}

__global__ void gq_dequantize_q4_0(const gq_u8* q, float* y, gq_i64 n_blocks) { gq_dequantize_blocks<GqQ4_0>(q, y, n_blocks); }
__global__ void gq_dequantize_q4_1(const gq_u8* q, float* y, gq_i64 n_blocks) { gq_dequantize_blocks<GqQ4_1>(q, y, n_blocks); }
__global__ void gq_dequantize_q5_0(const gq_u8* q, float* y, gq_i64 n_blocks) { gq_dequantize_blocks<GqQ5_0>(q, y, n_blocks); }
__global__ void gq_dequantize_q5_1(const gq_u8* q, float* y, gq_i64 n_blocks) { gq_dequantize_blocks<GqQ5_1>(q, y, n_blocks); }
__global__ void gq_dequantize_q8_0(const gq_u8* q, float* y, gq_i64 n_blocks) { gq_dequantize_blocks<GqQ8_0>(q, y, n_blocks); }

// Elementwise float conversions: one element per thread; out holds little-endian 16-bit words.
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
