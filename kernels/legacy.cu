// CUDA kernels for ggml's legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the row statistic
// their importance-matrix quantizers need (gq_row_sigma2); F16 and BF16 are in floats.cu. Loaded by
// the CuPy backend (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows (n_per_row is a multiple of 32), so block b of the whole tensor reads
// x[32*b ...] and writes out[type_bytes*b ...]; one thread quantizes one block, with the
// legacy.cuh functions that the host build (host_legacy.cpp) also runs.
//
// With an importance matrix, the row's mean square sigma2 must be ready first: gq_row_sigma2 fills
// it (one warp per 32 rows, each lane summing its own row in order), then the *_imatrix kernel runs.
#include "legacy.cuh"

// ---------------------------------------------------------------- kernel bodies
// Each takes the block functions of legacy.cuh of one type as template arguments.

template <int Bytes, void (*QuantizeWeighted)(const float*, const float*, float, gq_u8*)>
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
    gq_load_floats<GQ_QK>(x + b * GQ_QK, xb);
    gq_load_floats<GQ_QK>(imatrix + block_in_row * GQ_QK, qw);
    gq_u8 qb[Bytes];
    QuantizeWeighted(xb, qw, sigma2[row], qb);
    gq_copy_bytes<Bytes>(out + b * Bytes, qb);
}

template <int Bytes, void (*Dequantize)(const gq_u8*, float*)>
__device__ __forceinline__ void gq_dequantize_blocks(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                     gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    gq_u8 qb[Bytes];
    gq_copy_bytes<Bytes>(qb, q + b * Bytes);
    float yb[GQ_QK];
    Dequantize(qb, yb);
    gq_store_floats<GQ_QK>(y + b * GQ_QK, yb);
}

// ---------------------------------------------------------------- kernels

// gq_quantize_<t> and gq_dequantize_<t> of block type t (q4_0 ... q8_0): one thread per 32-weight
// block, n_blocks = rows * n_per_row / 32.
#define GQ_LEGACY_KERNELS(t, BYTES)                                                      \
    __global__ void gq_quantize_##t(const float* x, gq_u8* out, gq_i64 n_blocks) {       \
        gq_quantize_in_registers<GQ_QK, BYTES, gq_quantize_block_##t>(x, out, n_blocks); \
    }                                                                                    \
    __global__ void gq_dequantize_##t(const gq_u8* q, float* y, gq_i64 n_blocks) {       \
        gq_dequantize_blocks<BYTES, gq_dequantize_block_##t>(q, y, n_blocks);            \
    }

// gq_quantize_<t>_imatrix: the same with an importance matrix of n_per_row floats and the rows'
// sigma2 (from gq_row_sigma2); blocks_per_row = n_per_row / 32.
#define GQ_LEGACY_IMATRIX_KERNEL(t, BYTES)                                                               \
    __global__ void gq_quantize_##t##_imatrix(const float* x, const float* imatrix, const float* sigma2, \
                                              gq_u8* out, gq_i64 n_blocks, gq_i64 blocks_per_row) {      \
        gq_quantize_blocks_weighted<BYTES, gq_quantize_block_##t##_weighted>(                            \
            x, imatrix, sigma2, out, n_blocks, blocks_per_row);                                          \
    }

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

GQ_LEGACY_KERNELS(q4_0, GQ_Q4_0_BYTES)
GQ_LEGACY_KERNELS(q4_1, GQ_Q4_1_BYTES)
GQ_LEGACY_KERNELS(q5_0, GQ_Q5_0_BYTES)
GQ_LEGACY_KERNELS(q5_1, GQ_Q5_1_BYTES)
GQ_LEGACY_KERNELS(q8_0, GQ_Q8_0_BYTES)
GQ_LEGACY_IMATRIX_KERNEL(q4_0, GQ_Q4_0_BYTES)
GQ_LEGACY_IMATRIX_KERNEL(q4_1, GQ_Q4_1_BYTES)
GQ_LEGACY_IMATRIX_KERNEL(q5_0, GQ_Q5_0_BYTES)
GQ_LEGACY_IMATRIX_KERNEL(q5_1, GQ_Q5_1_BYTES)
// (no gq_quantize_q8_0_imatrix: ggml's Q8_0 ignores the importance matrix)

}  // extern "C"
