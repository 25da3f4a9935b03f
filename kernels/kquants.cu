// CUDA kernels for ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Loaded by the CuPy backend
// (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
//
// Every array is C-contiguous: x float32 [rows, n_per_row], out uint8 [rows, row_bytes].
// Super-blocks never straddle rows (n_per_row is a multiple of 256), so super-block b of the whole
// tensor reads x[256*b ...] and writes out[type_bytes*b ...]. With an importance matrix, weight i of
// a row uses imatrix[i % n_per_row] (the matrix covers one row; ggml's K-quant statistics, sigma2
// included, are per super-block, so no row pass is needed).
//
// Quantizing: one thread per sub-block (16 threads per super-block for Q2_K's, Q3_K's and Q6_K's
// 16-weight sub-blocks, 8 for Q4_K's and Q5_K's 32-weight ones: neighbouring lanes of one warp).
// Each runs its sub-block's scale search (kquants.cuh; Q2_K's, Q4_K's and Q5_K's all the same
// number of trials, so the lanes of a warp stay in step); the super-block's scales (and mins, and
// weight sums) go to every lane of it by shuffles, where each lane quantizes them as the host build
// does (the same functions), then requantizes its own sub-block and writes its share of the bytes,
// the levels that share a byte exchanged by shuffles.
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

// ---------------------------------------------------------------- the bytes that sub-blocks share

// A 64-byte field of 2-bit values laid out as Q2_K's qs (also Q3_K's qs and Q6_K's qh): byte 32h + l
// holds, at bits 2k, the value of level 128h + 32k + l, which is level l % 16 of sub-block
// 8h + 2k + l / 16. Each of the 16 lanes gives its sub-block's 16 values in one word (value i at
// bits 2i) and gets bytes 4 sub .. 4 sub + 3 of the field (h = sub / 8, l = 4 (sub % 8) + i).
__device__ __forceinline__ gq_u32 share_2bit_field(gq_u32 values, int sub) {
    const int h = sub >> 3;
    const int l0 = 4 * (sub & 7);
    gq_u32 from[4];
    GQ_UNROLL
    for (int k = 0; k < 4; ++k) from[k] = __shfl_sync(kWarp, values, 8 * h + 2 * k + (l0 >> 4), 16);
    gq_u32 word = 0;
    GQ_UNROLL
    for (int i = 0; i < 4; ++i) {
        const int e = (l0 & 15) + i;
        gq_u32 byte = 0;
        GQ_UNROLL
        for (int k = 0; k < 4; ++k) byte |= ((from[k] >> (2 * e)) & 3u) << (2 * k);
        word |= byte << (8 * i);
    }
    return word;
}

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
    const gq_u32 qs = share_2bit_field(levels, b.sub);  // gq_pack_2bit's bytes 4 sub ...
    if (!b.active) return;
    gq_u8* dst = out + b.super * GQ_Q2_K_BYTES;
    dst[b.sub] = (gq_u8)own;
    gq_store_u32(dst + 16 + 4 * b.sub, qs);
    if (b.sub == 0) {
        gq_store_u16(dst + 80, d_bits);
        gq_store_u16(dst + 82, dmin_bits);
    }
}

// ---------------------------------------------------------------- Q4_K and Q5_K: 8 lanes per super-block

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

// Q4_K and Q5_K by the names the kernels below take their quantizer by.
template <bool kWeighted>
__device__ __forceinline__ void quantize_q4_k(const float* __restrict__ x, const float* __restrict__ imatrix,
                                              gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    quantize_k4<15, kWeighted>(x, imatrix, out, n_subs, subs_per_row);
}
template <bool kWeighted>
__device__ __forceinline__ void quantize_q5_k(const float* __restrict__ x, const float* __restrict__ imatrix,
                                              gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    quantize_k4<31, kWeighted>(x, imatrix, out, n_subs, subs_per_row);
}

// ---------------------------------------------------------------- Q3_K: 16 lanes per super-block

template <bool kWeighted>
__device__ __forceinline__ void quantize_q3_k(const float* __restrict__ x, const float* __restrict__ imatrix,
                                              gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    const SubBlock<16> b = sub_block_of<16>(n_subs);
    if (b.idle_warp) return;
    const float* xsuper = x + b.super * GQ_QK_K;
    float xs[16];
    gq_load_floats<16>(xsuper + 16 * b.sub, xs);
    gq_i8 L[16];  // the search's levels + 4
    float scale;
    float sw;
    if constexpr (kWeighted) {
        float qw[16];
        gq_load_floats<16>(imatrix + (b.s % subs_per_row) * 16, qw);
        scale = gq_q3_k_sub_block_weighted(xs, qw, gq_q3_k_sigma2(xsuper), L, &sw);
    } else {
        scale = gq_make_q3_quants<16>(4, xs, L);
    }
    // The sub-block's levels, as bits: the low 2 bits of level i at bits 2i of low, bit 2 at bit i
    // of third. The search's for now (packed, they hold 2 registers, not 16).
    gq_u32 low = 0;
    gq_u32 third = 0;
    GQ_UNROLL
    for (int i = 0; i < 16; ++i) {
        low |= (gq_u32)(L[i] & 3) << (2 * i);
        third |= (gq_u32)((L[i] >> 2) & 1) << i;
    }
    float scales[16];
    gq_u8 packed[12];
    gq_u16 d_bits;
    gather<16>(scale, scales);
    if constexpr (kWeighted) {
        float sws[16];
        gather<16>(sw, sws);
        gq_q3_k_scales_weighted(scales, sws, packed, &d_bits);
    } else {
        gq_q3_k_scales(scales, packed, &d_bits);
    }
    // gq_finish_q3_k's levels: requantized with the sub-block's stored scale unless that is 0.
    int sc = 0;
    GQ_UNROLL
    for (int k = 0; k < 16; ++k) sc = k == b.sub ? gq_scale_q3(packed, k) : sc;
    const float d = gq_fp16_to_fp32(d_bits) * (float)(sc - 32);
    if (d != 0.0f) {
        low = 0;
        third = 0;
        GQ_UNROLL
        for (int i = 0; i < 16; ++i) {
            const int l = gq_q3_k_level(xs[i], d);
            low |= (gq_u32)(l & 3) << (2 * i);
            third |= (gq_u32)((l >> 2) & 1) << i;
        }
    }
    const gq_u32 qs = share_2bit_field(low, b.sub);
    // hmask[m] bit k = bit 2 of level 32k + m, level m % 16 of sub-block 2k + m / 16; this lane
    // writes hmask[2 sub], hmask[2 sub + 1].
    gq_u32 hmask = 0;
    GQ_UNROLL
    for (int k = 0; k < 8; ++k) {
        const gq_u32 bits = __shfl_sync(kWarp, third, 2 * k + (b.sub >> 3), 16) >> ((2 * b.sub) & 15);
        hmask |= ((bits & 1u) << k) | (((bits >> 1) & 1u) << (8 + k));
    }
    if (!b.active) return;
    gq_u8* dst = out + b.super * GQ_Q3_K_BYTES;
    gq_store_u16(dst + 2 * b.sub, (gq_u16)hmask);
    gq_store_u32(dst + 32 + 4 * b.sub, qs);
    if (b.sub == 0) {
        gq_copy_bytes<12>(dst + 96, packed);
        gq_store_u16(dst + 108, d_bits);
    }
}

// ---------------------------------------------------------------- Q6_K: 16 lanes per super-block

template <bool kWeighted>
__device__ __forceinline__ void quantize_q6_k(const float* __restrict__ x, const float* __restrict__ imatrix,
                                              gq_u8* __restrict__ out, gq_i64 n_subs, gq_i64 subs_per_row) {
    const SubBlock<16> b = sub_block_of<16>(n_subs);
    if (b.idle_warp) return;
    float xs[16];
    gq_load_floats<16>(x + b.s * 16, xs);
    gq_i8 L[16];  // the search's levels + 32
    float scale;
    if constexpr (kWeighted) {
        float qw[16];
        gq_load_floats<16>(imatrix + (b.s % subs_per_row) * 16, qw);
        scale = gq_q6_k_sub_block(xs, qw, L);
    } else {
        scale = gq_q6_k_sub_block(xs, nullptr, L);
    }
    float scales[16];
    gather<16>(scale, scales);
    gq_i8 sc_all[16];
    gq_u16 d_bits = 0;
    const bool nonzero = gq_q6_k_scales(scales, sc_all, &d_bits);  // else the super-block is zeros
    const int sc = nonzero ? pick<16>(sc_all, b.sub) : 0;
    // The sub-block's levels: requantized with its stored scale unless that is 0.
    const float d = gq_fp16_to_fp32(d_bits) * (float)sc;
    gq_u32 low[2] = {0, 0};  // the low 4 bits of level i in nibble i % 8 of low[i / 8]
    gq_u32 top = 0;          // the top 2 bits of level i at bits 2i
    GQ_UNROLL
    for (int i = 0; i < 16; ++i) {
        const int l = !nonzero ? 0 : d != 0.0f ? gq_q6_k_level(xs[i], d) : L[i];
        low[i / 8] |= (gq_u32)(l & 0xF) << (4 * (i % 8));
        top |= (gq_u32)(l >> 4) << (2 * i);
    }
    const gq_u32 qh = share_2bit_field(top, b.sub);
    // ql[64h + 32k + l] = low bits of level 128h + 32k + l | those of level 128h + 32(k + 2) + l << 4
    // (k = 0, 1); this lane writes ql[8 sub ...]: h = sub / 8, k = sub % 8 / 4, l = 8 (sub % 4) + i,
    // levels 8 (sub % 2) + i of sub-blocks 8h + 2k + (sub % 4) / 2 and 4 after it.
    const int from = 8 * (b.sub >> 3) + 2 * ((b.sub & 7) >> 2) + ((b.sub & 3) >> 1);
    const gq_u32 lo0 = __shfl_sync(kWarp, low[0], from, 16);
    const gq_u32 lo1 = __shfl_sync(kWarp, low[1], from, 16);
    const gq_u32 hi0 = __shfl_sync(kWarp, low[0], from + 4, 16);
    const gq_u32 hi1 = __shfl_sync(kWarp, low[1], from + 4, 16);
    const gq_u32 lo = (b.sub & 1) ? lo1 : lo0;
    const gq_u32 hi = (b.sub & 1) ? hi1 : hi0;
    if (!b.active) return;
    gq_u8* dst = out + b.super * GQ_Q6_K_BYTES;
    gq_store_u32(dst + 8 * b.sub, interleave_nibbles(lo, hi, 0));
    gq_store_u32(dst + 8 * b.sub + 4, interleave_nibbles(lo, hi, 1));
    gq_store_u32(dst + 128 + 4 * b.sub, qh);
    dst[192 + b.sub] = (gq_u8)sc;
    if (b.sub == 0) gq_store_u16(dst + 208, nonzero ? d_bits : (gq_u16)0);
}

// ---------------------------------------------------------------- dequantizing

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

// The three kernels of type t (q2_k ... q6_k): gq_quantize_<t> and gq_quantize_<t>_imatrix, one thread
// per sub-block (n_subs = rows * n_per_row / 16 for Q2_K, Q3_K, Q6_K or / 32 for Q4_K, Q5_K, launched
// as whole warps: at least n_subs threads, a multiple of 32; with an importance matrix, subs_per_row =
// n_per_row / 16 or / 32), and gq_dequantize_<t>, one thread per 32 weights (n_parts = 8 * n_superblocks).
#define GQ_KQUANT_KERNELS(t, BYTES)                                                                       \
    __global__ void gq_quantize_##t(const float* x, gq_u8* out, gq_i64 n_subs) {                         \
        quantize_##t<false>(x, nullptr, out, n_subs, 1);                                                  \
    }                                                                                                     \
    __global__ void gq_quantize_##t##_imatrix(const float* x, const float* imatrix, gq_u8* out,          \
                                              gq_i64 n_subs, gq_i64 subs_per_row) {                     \
        quantize_##t<true>(x, imatrix, out, n_subs, subs_per_row);                                        \
    }                                                                                                     \
    __global__ void gq_dequantize_##t(const gq_u8* q, float* y, gq_i64 n_parts) {                         \
        dequantize_superblocks<BYTES, gq_dequantize_part_##t>(q, y, n_parts);                             \
    }

extern "C" {

GQ_KQUANT_KERNELS(q2_k, GQ_Q2_K_BYTES)
GQ_KQUANT_KERNELS(q4_k, GQ_Q4_K_BYTES)
GQ_KQUANT_KERNELS(q5_k, GQ_Q5_K_BYTES)
GQ_KQUANT_KERNELS(q3_k, GQ_Q3_K_BYTES)
GQ_KQUANT_KERNELS(q6_k, GQ_Q6_K_BYTES)

}  // extern "C"
