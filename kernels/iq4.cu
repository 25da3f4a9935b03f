// CUDA kernels for ggml's 4-bit non-linear formats IQ4_NL and IQ4_XS. Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes]. Blocks
// never straddle rows, so block b of the whole tensor reads x[block_size * b ...] and writes
// out[type_bytes * b ...]. IQ4_NL: one thread per 32-weight block. IQ4_XS: one thread per 32-weight
// sub-block; the eight threads of a super-block (neighbouring lanes of one warp) exchange their
// sub-block scales with shuffles. The per-block arithmetic is the iq4.cuh functions that the host
// build (host_iq4.cpp) also runs.
#include "iq4.cuh"

namespace gq_iq4 {

template <bool kWeighted>
__device__ __forceinline__ void quantize_iq4_nl(const float* __restrict__ x, const float* __restrict__ imatrix,
                                                gq_u8* __restrict__ out, gq_i64 n_blocks, gq_i64 blocks_per_row) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    float xb[GQ_IQ4_BLOCK];
    gq_load_floats<GQ_IQ4_BLOCK>(x + b * GQ_IQ4_BLOCK, xb);
    gq_u8 qb[GQ_IQ4_NL_BYTES];
    if constexpr (kWeighted) {
        float qw[GQ_IQ4_BLOCK];
        gq_load_floats<GQ_IQ4_BLOCK>(imatrix + (b % blocks_per_row) * GQ_IQ4_BLOCK, qw);
        gq_quantize_block_iq4_nl(xb, qw, qb);
    } else {
        gq_quantize_block_iq4_nl(xb, nullptr, qb);
    }
    gq_copy_bytes<GQ_IQ4_NL_BYTES>(out + b * GQ_IQ4_NL_BYTES, qb);
}

// One thread per 32-weight sub-block s (sub-block s & 7 of super-block s >> 3). Every lane of the
// warp must reach the shuffles, so lanes past the end (whole groups of eight, as n_subs is a
// multiple of 8) redo super-block 0's work and store nothing.
template <bool kWeighted>
__device__ __forceinline__ void quantize_iq4_xs(const float* __restrict__ x, const float* __restrict__ imatrix,
                                                gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    const gq_i64 t = gq_thread_index();
    const bool active = t < n_subs;
    const gq_i64 s = active ? t : (t & 7);
    const int ib = (int)(s & 7);
    const gq_i64 super = s >> 3;
    const float* xs = x + super * GQ_IQ4_SUPER;
    float xb[GQ_IQ4_BLOCK];
    float weight[GQ_IQ4_BLOCK];
    gq_load_floats<GQ_IQ4_BLOCK>(xs + ib * GQ_IQ4_BLOCK, xb);
    if constexpr (kWeighted) {
        float qw[GQ_IQ4_BLOCK];
        gq_load_floats<GQ_IQ4_BLOCK>(imatrix + (s % subs_per_row) * GQ_IQ4_BLOCK, qw);
        // the super-block's sigma2, summed in order over all 256 weights by each of its 8 lanes
        gq_iq4_weights(xb, qw, gq_iq4_sigma2<GQ_IQ4_SUPER>(xs), weight);
    } else {
        gq_iq4_weights(xb, nullptr, 0.0f, weight);
    }
    const float scale = gq_iq4_search_scale(xb, weight);
    float scales[GQ_IQ4_SUBS];
    GQ_UNROLL
    for (int k = 0; k < GQ_IQ4_SUBS; ++k) scales[k] = __shfl_sync(0xFFFFFFFFu, scale, k, GQ_IQ4_SUBS);
    const float d = gq_iq4_xs_super_scale(scales);
    if (!active) return;
    gq_u8* dst = out + super * GQ_IQ4_XS_BYTES;
    if (ib == 0) {
        gq_u8 header[8];
        gq_iq4_xs_store_header(d, scales, header);
        gq_copy_bytes<8>(dst, header);
    }
    gq_u8 qs[GQ_IQ4_BLOCK / 2];
    gq_iq4_xs_pack_sub_block(xb, d, scale, qs);
    gq_copy_bytes<GQ_IQ4_BLOCK / 2>(dst + 8 + (GQ_IQ4_BLOCK / 2) * ib, qs);
}

}  // namespace gq_iq4

using namespace gq_iq4;

// ---------------------------------------------------------------- kernels

extern "C" {

__global__ void gq_quantize_iq4_nl(const float* x, gq_u8* out, gq_i64 n_blocks) {
    quantize_iq4_nl<false>(x, nullptr, out, n_blocks, 1);
}
__global__ void gq_quantize_iq4_nl_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_blocks,
                                           gq_i64 blocks_per_row) {
    quantize_iq4_nl<true>(x, imatrix, out, n_blocks, blocks_per_row);
}

// n_subs: 32-weight sub-blocks (8 per super-block); launch at least n_subs threads.
__global__ void gq_quantize_iq4_xs(const float* x, gq_u8* out, gq_i64 n_subs) {
    quantize_iq4_xs<false>(x, nullptr, out, n_subs, 1);
}
__global__ void gq_quantize_iq4_xs_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_subs,
                                           gq_i64 subs_per_row) {
    quantize_iq4_xs<true>(x, imatrix, out, n_subs, subs_per_row);
}

// ---------------------------------------------------------------- dequantize kernels

__global__ void gq_dequantize_iq4_nl(const gq_u8* q, float* y, gq_i64 n_blocks) {
    gq_dequantize_in_registers<GQ_IQ4_BLOCK, GQ_IQ4_NL_BYTES, gq_dequantize_block_iq4_nl>(q, y, n_blocks);
}

// n_subs: 32-weight sub-blocks, one thread each.
__global__ void gq_dequantize_iq4_xs(const gq_u8* q, float* y, gq_i64 n_subs) {
    const gq_i64 s = gq_thread_index();
    if (s >= n_subs) return;
    float yb[GQ_IQ4_BLOCK];
    gq_dequantize_sub_block_iq4_xs(q + (s >> 3) * GQ_IQ4_XS_BYTES, (int)(s & 7), yb);
    gq_store_floats<GQ_IQ4_BLOCK>(y + s * GQ_IQ4_BLOCK, yb);
}

}  // extern "C"
