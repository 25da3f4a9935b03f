// Row kernels of the GPU streaming engine (gpuquant/backends/cupy/stream.py): the finite check that
// gates the quantizers, and the error sums of a quantized piece. Loaded by the CuPy backend through
// NVRTC with --fmad=false -ftz=false, like every kernels/*.cu.
//
// One CUDA block of GQ_ROW_THREADS threads per row (a grid-stride loop over rows); thread t reads
// columns t, t + GQ_ROW_THREADS, ... and the block combines the threads' values in a fixed tree, so
// a row's result never depends on scheduling: the figures are the same on every run.
#include "common.cuh"

#define GQ_ROW_THREADS 32  // one warp a row: rows run side by side in many blocks (memory-bound either way)

GQ_FN bool gq_is_finite(float v) { return (gq_f32_bits(v) & 0x7F800000u) != 0x7F800000u; }

// The largest |difference| so far, NaN once any is NaN (C's a > b is false for NaN, so it is said
// explicitly): the host's figures treat a NaN difference the same way.
GQ_FN float gq_max_abs(float m, float a) { return (m != m) ? m : ((a != a || a > m) ? a : m); }

extern "C" {

// row_bad[r] = 1 when row r of x [rows, n_per_row] holds NaN or Inf, else 0; those values are set
// to 0 in place, so that no quantizer ever reads them (a NaN-derived index would read out of a
// lattice table). The host reads row_bad with the piece's output and stops the run at the first
// bad row: nothing quantized from a sanitized row is ever written.
__global__ void gq_check_rows(float* __restrict__ x, gq_u8* __restrict__ row_bad, gq_i64 rows, gq_i64 n_per_row) {
    __shared__ int bad[GQ_ROW_THREADS];
    const int t = threadIdx.x;
    for (gq_i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float* xr = x + r * n_per_row;
        int mine = 0;
        for (gq_i64 j = t; j < n_per_row; j += GQ_ROW_THREADS) {
            if (!gq_is_finite(xr[j])) {
                xr[j] = 0.0f;
                mine = 1;
            }
        }
        bad[t] = mine;
        __syncthreads();
        for (int s = GQ_ROW_THREADS / 2; s > 0; s >>= 1) {
            if (t < s) bad[t] |= bad[t + s];
            __syncthreads();
        }
        if (t == 0) row_bad[r] = (gq_u8)bad[0];
        __syncthreads();  // bad[0] is read before the next row overwrites it
    }
}

}  // extern "C"

// sums[5 r ...] = row r's sum x^2, sum (x - y)^2, sum w x^2, sum w (x - y)^2 (0 without w) and
// max |x - y|: y is the row's round trip, w the importance matrix (one value per column). Squares
// are float (as the host's pass), sums double: the figures agree with the host's to float rounding.
template <bool Weighted>
__device__ __forceinline__ void gq_error_rows(const float* __restrict__ x, const float* __restrict__ y,
                                              const float* __restrict__ w, double* __restrict__ sums,
                                              gq_i64 rows, gq_i64 n_per_row) {
    __shared__ double part[4][GQ_ROW_THREADS];
    __shared__ float top[GQ_ROW_THREADS];
    const int t = threadIdx.x;
    for (gq_i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * n_per_row;
        const float* yr = y + r * n_per_row;
        double sx = 0.0, se = 0.0, wsx = 0.0, wse = 0.0;
        float m = 0.0f;
        for (gq_i64 j = t; j < n_per_row; j += GQ_ROW_THREADS) {
            const float xv = xr[j];
            const float d = xv - yr[j];
            const float xx = xv * xv;
            const float dd = d * d;
            m = gq_max_abs(m, d < 0.0f ? -d : d);
            sx += (double)xx;
            se += (double)dd;
            if (Weighted) {
                wsx += (double)(w[j] * xx);
                wse += (double)(w[j] * dd);
            }
        }
        part[0][t] = sx;
        part[1][t] = se;
        part[2][t] = wsx;
        part[3][t] = wse;
        top[t] = m;
        __syncthreads();
        for (int s = GQ_ROW_THREADS / 2; s > 0; s >>= 1) {
            if (t < s) {
                for (int k = 0; k < 4; ++k) part[k][t] += part[k][t + s];
                top[t] = gq_max_abs(top[t], top[t + s]);
            }
            __syncthreads();
        }
        if (t == 0) {
            for (int k = 0; k < 4; ++k) sums[5 * r + k] = part[k][0];
            sums[5 * r + 4] = (double)top[0];
        }
        __syncthreads();
    }
}

extern "C" {

__global__ void gq_error_rows_plain(const float* __restrict__ x, const float* __restrict__ y,
                                    double* __restrict__ sums, gq_i64 rows, gq_i64 n_per_row) {
    gq_error_rows<false>(x, y, x, sums, rows, n_per_row);
}

__global__ void gq_error_rows_weighted(const float* __restrict__ x, const float* __restrict__ y,
                                       const float* __restrict__ w, double* __restrict__ sums, gq_i64 rows,
                                       gq_i64 n_per_row) {
    gq_error_rows<true>(x, y, w, sums, rows, n_per_row);
}

}  // extern "C"
