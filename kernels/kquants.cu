// CUDA kernels for ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes].
// Super-blocks never straddle rows (n_per_row is a multiple of 256), so super-block b of the whole
// tensor reads x[256*b ...] and writes out[type_bytes*b ...]. With an importance matrix, weight i of
// a row uses imatrix[i % n_per_row] (the matrix covers one row; ggml's K-quant statistics, sigma2
// included, are per super-block, so no row pass is needed).
//
// Quantizing Q2_K, Q4_K and Q5_K: one thread per sub-block (16 threads per super-block for Q2_K's
// 16-weight sub-blocks, 8 for Q4_K's and Q5_K's 32-weight ones: neighbouring lanes of one warp).
// Each runs its sub-block's scale search (kquants.cuh), all of them the same number of trials, so
// the lanes of a warp stay in step; the super-block's scales and mins go to every lane of it by
// shuffles, where each lane quantizes them as the host build does (the same functions), then
// requantizes its own sub-block and writes its share of the bytes, the levels that share a byte
// exchanged by shuffles. Q3_K and Q6_K: one thread per super-block, running the host build's
// per-super-block functions.
// Dequantizing: one thread per 32 weights (8 threads per super-block), coalesced float4 stores.
#include "kquants.cuh"

namespace gq_kq {

constexpr unsigned kWarp = 0xFFFFFFFFu;

// The sub-block a thread quantizes: sub-block `sub` (of Lanes) of super-block `super`. Every lane of
// a warp must reach the shuffles, so the lanes past the end of a warp that holds some work redo
// super-block 0's sub-blocks (n_subs is a multiple of Lanes) and store nothing (active false); a
// warp wholly past the end returns at once.
template <int Lanes>
struct SubBlock {
    bool active;
    bool idle_warp;
    gq_i64 s;  // the global sub-block index
    int sub;
    gq_i64 super;
};

template <int Lanes>
__device__ __forceinline__ SubBlock<Lanes> sub_block_of(gq_i64 n_subs) {
    const gq_i64 t = gq_thread_index();
    SubBlock<Lanes> b;
    b.idle_warp = (t & ~(gq_i64)31) >= n_subs;  // the same for the whole warp
    b.active = t < n_subs;
    b.s = b.active ? t : (t & (Lanes - 1));
    b.sub = (int)(b.s & (Lanes - 1));
    b.super = b.s / Lanes;
    return b;
}

// v of each of the super-block's Lanes lanes, in sub-block order.
template <int Lanes>
__device__ __forceinline__ void gather(float v, float* all) {
    GQ_UNROLL
    for (int k = 0; k < Lanes; ++k) all[k] = __shfl_sync(kWarp, v, k, Lanes);
}

// a[j] for a run-time j, by selects (a stays in registers).
template <int N, typename T>
__device__ __forceinline__ T pick(const T* a, int j) {
    T r = a[0];
    GQ_UNROLL
    for (int k = 1; k < N; ++k) r = k == j ? a[k] : r;
    return r;
}

// ---------------------------------------------------------------- Q2_K: 16 lanes per super-block

template <bool kWeighted>
__device__ __forceinline__ void quantize_q2_k(const float* __restrict__ x, const float* __restrict__ imatrix,
                                              gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    const SubBlock<16> b = sub_block_of<16>(n_subs);
    if (b.idle_warp) return;
    const float* xsuper = x + b.super * GQ_QK_K;
    float xs[16];
    gq_load_floats<16>(xsuper + 16 * b.sub, xs);
    float scales[16];
    float mins[16];
    gq_u8 sb[16];
    gq_u16 d_bits, dmin_bits;
    GqQkxFit fit;
    if constexpr (kWeighted) {
        float qw[16];
        gq_load_floats<16>(imatrix + (b.s % subs_per_row) * 16, qw);
        float sw;
        fit = gq_q2_k_sub_block_weighted(xs, qw, gq_q2_k_sigma2(xsuper), &sw);
        float sws[16];
        gather<16>(fit.scale, scales);
        gather<16>(-fit.min, mins);
        gather<16>(sw, sws);
        gq_q2_k_scales_weighted(scales, mins, sws, sb, &d_bits, &dmin_bits);
    } else {
        fit = gq_q2_k_sub_block(xs);
        gather<16>(fit.scale, scales);
        gather<16>(-fit.min, mins);
        gq_q2_k_scales(scales, mins, sb, &d_bits, &dmin_bits);
    }
    // The sub-block's levels (gq_finish_q2_k's): requantized with its stored scale unless that is 0.
    const int own = pick<16>(sb, b.sub);
    const float d = gq_fp16_to_fp32(d_bits) * (float)(own & 0xF);
    const float dm = gq_fp16_to_fp32(dmin_bits) * (float)(own >> 4);
    gq_u32 levels = 0;  // 2 bits each, level i at bits 2i
    GQ_UNROLL
    for (int i = 0; i < 16; ++i) {
        const int l = d != 0.0f ? gq_requantize_level(xs[i], dm, d, 3) : gq_qkx_fit_level(3, fit, xs[i]);
        levels |= (gq_u32)l << (2 * i);
    }
    // qs byte 32h + l holds level l % 16 of sub-block 8h + 2k + l / 16 at bits 2k (gq_pack_2bit).
    // This lane writes bytes 4 sub .. 4 sub + 3: h = sub / 8, l = 4 (sub % 8) + i.
    const int h = b.sub >> 3;
    const int l0 = 4 * (b.sub & 7);
    gq_u32 from[4];
    GQ_UNROLL
    for (int k = 0; k < 4; ++k) from[k] = __shfl_sync(kWarp, levels, 8 * h + 2 * k + (l0 >> 4), 16);
    gq_u32 word = 0;
    GQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const int e = (l0 & 15) + i;
        gq_u32 byte = 0;
        GQ_UNROLL
        for (int k = 0; k < 4; ++k) byte |= ((from[k] >> (2 * e)) & 3u) << (2 * k);
        word |= byte << (8 * i);
    }
    if (!b.active) return;
    gq_u8* dst = out + b.super * GQ_Q2_K_BYTES;
    dst[b.sub] = (gq_u8)own;
    gq_store_u32(dst + 16 + 4 * b.sub, word);
    if (b.sub == 0) {
        gq_store_u16(dst + 80, d_bits);
        gq_store_u16(dst + 82, dmin_bits);
    }
}

// ---------------------------------------------------------------- Q4_K and Q5_K: 8 lanes per super-block

// Bytes 4i .. 4i + 3 of 8 from two words of 8 nibbles: nibble n of lo | nibble n of hi << 4.
__device__ __forceinline__ gq_u32 interleave_nibbles(gq_u32 lo, gq_u32 hi, int half) {
    gq_u32 word = 0;
    GQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const int n = 4 * half + i;
        word |= (((lo >> (4 * n)) & 0xFu) | (((hi >> (4 * n)) & 0xFu) << 4)) << (8 * i);
    }
    return word;
}

template <int NMAX, bool kWeighted>
__device__ __forceinline__ void quantize_k4(const float* __restrict__ x, const float* __restrict__ imatrix,
                                            gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    constexpr int kBytes = NMAX == 15 ? GQ_Q4_K_BYTES : GQ_Q5_K_BYTES;
    const SubBlock<8> b = sub_block_of<8>(n_subs);
    if (b.idle_warp) return;
    const float* xsuper = x + b.super * GQ_QK_K;
    float xs[32];
    gq_load_floats<32>(xsuper + 32 * b.sub, xs);
    float scales[8];
    float mins[8];
    gq_u8 ls[8];
    gq_u8 lm[8];
    gq_u16 d_bits, dmin_bits;
    GqQkxFit fit;
    if constexpr (kWeighted) {
        float qw[32];
        gq_load_floats<32>(imatrix + (b.s % subs_per_row) * 32, qw);
        float sw;
        fit = gq_k4_sub_block_weighted<NMAX>(xs, qw, gq_k4_sigma2(xsuper), &sw);
        float sws[8];
        gather<8>(fit.scale, scales);
        gather<8>(-fit.min, mins);
        gather<8>(sw, sws);
        gq_k4_scales_weighted(scales, mins, sws, NMAX == 31, ls, lm, &d_bits, &dmin_bits);
    } else {
        fit = gq_k4_sub_block<NMAX>(xs);
        gather<8>(fit.scale, scales);
        gather<8>(-fit.min, mins);
        gq_k4_scales(scales, mins, ls, lm, &d_bits, &dmin_bits);
    }
    // The sub-block's levels (gq_finish_k4's): requantized with its stored scale and min, read back
    // from the packed bytes, unless the scale is 0.
    gq_u8 packed[12];
    gq_pack_scales_k4(ls, lm, packed);
    int sc = 0;
    int m = 0;
    GQ_UNROLL
    for (int k = 0; k < 8; ++k) {
        int sc_k, m_k;
        gq_scale_min_k4(k, packed, &sc_k, &m_k);
        sc = k == b.sub ? sc_k : sc;
        m = k == b.sub ? m_k : m;
    }
    const float d = gq_fp16_to_fp32(d_bits) * (float)sc;
    const float dm = gq_fp16_to_fp32(dmin_bits) * (float)m;
    gq_u32 low[4] = {0, 0, 0, 0};  // the low 4 bits of level i in nibble i % 8 of low[i / 8]
    gq_u32 fifth = 0;               // Q5_K: the 5th bit of level i at bit i
    GQ_UNROLL
    for (int i = 0; i < 32; ++i) {
        const int l = d != 0.0f ? gq_requantize_level(xs[i], dm, d, NMAX) : gq_qkx_fit_level(NMAX, fit, xs[i]);
        low[i / 8] |= (gq_u32)(l & 0xF) << (4 * (i % 8));
        fifth |= (gq_u32)(l >> 4) << i;
    }
    // qs[32g + l] = level l of sub-block 2g | level l of sub-block 2g + 1 << 4 (gq_pack_q4_k). Lane
    // 2g + half writes qs[32g + 16 half ...] (16 bytes), with its partner's levels 16 half .. +15.
    const int half = b.sub & 1;
    const gq_u32 mine0 = half ? low[2] : low[0];
    const gq_u32 mine1 = half ? low[3] : low[1];
    const gq_u32 theirs0 = __shfl_sync(kWarp, half ? low[0] : low[2], b.sub ^ 1, 8);
    const gq_u32 theirs1 = __shfl_sync(kWarp, half ? low[1] : low[3], b.sub ^ 1, 8);
    const gq_u32 lo0 = half ? theirs0 : mine0;
    const gq_u32 lo1 = half ? theirs1 : mine1;
    const gq_u32 hi0 = half ? mine0 : theirs0;
    const gq_u32 hi1 = half ? mine1 : theirs1;
    gq_u32 qh = 0;
    if constexpr (NMAX == 31) {
        // qh[l] bit k = the 5th bit of level l of sub-block k (gq_pack_q5_k); this lane writes qh[4 sub ...].
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) {
            const gq_u32 bits = __shfl_sync(kWarp, fifth, k, 8) >> (4 * b.sub);
            GQ_UNROLL
            for (int i = 0; i < 4; ++i) qh |= ((bits >> i) & 1u) << (8 * i + k);
        }
    }
    if (!b.active) return;
    gq_u8* dst = out + b.super * kBytes;
    if (b.sub == 0) {
        gq_u8 header[16];
        gq_write_header_k4(d_bits, dmin_bits, packed, header);
        gq_copy_bytes<16>(dst, header);
    }
    gq_u8* qs = dst + (NMAX == 15 ? 16 : 48) + 32 * (b.sub >> 1) + 16 * half;
    gq_store_u32(qs, interleave_nibbles(lo0, hi0, 0));
    gq_store_u32(qs + 4, interleave_nibbles(lo0, hi0, 1));
    gq_store_u32(qs + 8, interleave_nibbles(lo1, hi1, 0));
    gq_store_u32(qs + 12, interleave_nibbles(lo1, hi1, 1));
    if constexpr (NMAX == 31) gq_store_u32(dst + 16 + 4 * b.sub, qh);
}

// ---------------------------------------------------------------- one thread per super-block

template <int Bytes, void (*QuantizeWeighted)(const float*, const float*, gq_u8*)>
__device__ __forceinline__ void quantize_superblocks_weighted(const float* __restrict__ x,
                                                              const float* __restrict__ imatrix,
                                                              gq_u8* __restrict__ out, gq_i64 n_superblocks,
                                                              gq_i64 superblocks_per_row) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_superblocks) return;
    const gq_i64 in_row = b % superblocks_per_row;
    QuantizeWeighted(x + b * GQ_QK_K, imatrix + in_row * GQ_QK_K, out + b * Bytes);
}

template <int Bytes, void (*DequantizePart)(const gq_u8*, int, float*)>
__device__ __forceinline__ void dequantize_superblocks(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                       gq_i64 n_parts) {
    const gq_i64 t = gq_thread_index();
    if (t >= n_parts) return;
    const gq_i64 b = t / 8;
    float v[32];
    DequantizePart(q + b * Bytes, (int)(t - b * 8), v);
    gq_store_floats<32>(y + t * 32, v);
}

}  // namespace gq_kq

using namespace gq_kq;

// ---------------------------------------------------------------- kernels

// The three kernels of type t (q2_k ... q6_k), named gq_quantize_<t>, gq_quantize_<t>_imatrix and
// gq_dequantize_<t>; dequantize: one thread per 32 weights, n_parts = 8 * n_superblocks.
#define GQ_KQUANT_DEQUANTIZE(t, BYTES)                                                \
    __global__ void gq_dequantize_##t(const gq_u8* q, float* y, gq_i64 n_parts) {     \
        dequantize_superblocks<BYTES, gq_dequantize_part_##t>(q, y, n_parts);         \
    }

// Q3_K and Q6_K: one thread per super-block; n_superblocks = rows * n_per_row / 256; with an
// importance matrix of n_per_row floats, superblocks_per_row = n_per_row / 256.
#define GQ_KQUANT_PER_SUPERBLOCK(t, BYTES)                                                        \
    __global__ void gq_quantize_##t(const float* x, gq_u8* out, gq_i64 n_superblocks) {           \
        gq_quantize_in_memory<GQ_QK_K, BYTES, gq_quantize_superblock_##t>(x, out, n_superblocks); \
    }                                                                                             \
    __global__ void gq_quantize_##t##_imatrix(const float* x, const float* imatrix, gq_u8* out,   \
                                              gq_i64 n_superblocks, gq_i64 superblocks_per_row) { \
        quantize_superblocks_weighted<BYTES, gq_quantize_superblock_##t##_weighted>(              \
            x, imatrix, out, n_superblocks, superblocks_per_row);                                 \
    }                                                                                             \
    GQ_KQUANT_DEQUANTIZE(t, BYTES)

extern "C" {

// Q2_K, Q4_K, Q5_K: one thread per sub-block; n_subs = rows * n_per_row / 16 (Q2_K) or / 32 (Q4_K,
// Q5_K), launched as whole warps (at least n_subs threads, a multiple of 32); with an importance
// matrix, subs_per_row = n_per_row / 16 or / 32.
__global__ void gq_quantize_q2_k(const float* x, gq_u8* out, gq_i64 n_subs) {
    quantize_q2_k<false>(x, nullptr, out, n_subs, 1);
}
__global__ void gq_quantize_q2_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_subs,
                                         gq_i64 subs_per_row) {
    quantize_q2_k<true>(x, imatrix, out, n_subs, subs_per_row);
}
GQ_KQUANT_DEQUANTIZE(q2_k, GQ_Q2_K_BYTES)

__global__ void gq_quantize_q4_k(const float* x, gq_u8* out, gq_i64 n_subs) {
    quantize_k4<15, false>(x, nullptr, out, n_subs, 1);
}
__global__ void gq_quantize_q4_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_subs,
                                         gq_i64 subs_per_row) {
    quantize_k4<15, true>(x, imatrix, out, n_subs, subs_per_row);
}
GQ_KQUANT_DEQUANTIZE(q4_k, GQ_Q4_K_BYTES)

__global__ void gq_quantize_q5_k(const float* x, gq_u8* out, gq_i64 n_subs) {
    quantize_k4<31, false>(x, nullptr, out, n_subs, 1);
}
__global__ void gq_quantize_q5_k_imatrix(const float* x, const float* imatrix, gq_u8* out, gq_i64 n_subs,
                                         gq_i64 subs_per_row) {
    quantize_k4<31, true>(x, imatrix, out, n_subs, subs_per_row);
}
GQ_KQUANT_DEQUANTIZE(q5_k, GQ_Q5_K_BYTES)

GQ_KQUANT_PER_SUPERBLOCK(q3_k, GQ_Q3_K_BYTES)
GQ_KQUANT_PER_SUPERBLOCK(q6_k, GQ_Q6_K_BYTES)

}  // extern "C"
