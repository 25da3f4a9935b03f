// ggml's 4-bit non-linear formats IQ4_NL (32-weight blocks) and IQ4_XS (256-weight super-blocks),
// one block or sub-block at a time: the CUDA kernels (iq4.cu) and the host build
// (host_iq4.cpp) call these same functions.
//
// Block layouts (little-endian, no padding):
//   IQ4_NL  18 bytes: d fp16 | qs[16]                                   x = d * K[q]
//   IQ4_XS 136 bytes: d fp16 | scales_h u16 | scales_l[4] | qs[128]     x = d * (s - 32) * K[q]
// K is the 16-level table kvalues_iq4nl. qs[j] of a 32-weight block holds weight j in its low
// nibble and weight j + 16 in its high nibble. In IQ4_XS, sub-block ib's 6-bit multiplier s has
// its low 4 bits in nibble ib % 2 of scales_l[ib / 2] and its top 2 bits at bit 2 ib of scales_h.
//
// Both run ggml's quantize_row_iq4_nl_impl with ntry = 7, with or without an importance matrix:
// per 32-weight block, a weighted least-squares scale chosen among 16 trial inverse scales, each
// weight snapped to the nearest level. The weights are x^2, or qw * sqrt(sigma2 + x^2) with
// sigma2 = 2 / S * sum of x^2 over the (super-)block of S weights.
#pragma once

#include "common.cuh"

#define GQ_IQ4_BLOCK 32
#define GQ_IQ4_SUPER 256
#define GQ_IQ4_SUBS 8  // 32-weight sub-blocks per IQ4_XS super-block
#define GQ_IQ4_NL_BYTES 18
#define GQ_IQ4_XS_BYTES 136
#define GQ_IQ4_NTRY 7  // trial inverse scales (itry - 127) / max for itry in [-7, 7]

// ---------------------------------------------------------------- the level table

// kvalues_iq4nl as four little-endian words of int8 levels
// (-127 -104 -83 -65 | -49 -35 -22 -10 | 1 13 25 38 | 53 69 89 113), so that a lookup by a
// run-time index stays in registers on the device.
GQ_FN float gq_iq4nl_level(int index) {
    const gq_u32 word = index < 8 ? (index < 4 ? 0xBFAD9881u : 0xF6EADDCFu)
                                  : (index < 12 ? 0x26190D01u : 0x71594535u);
    return (float)(gq_i8)(gq_u8)(word >> (8 * (index & 3)));
}

// ggml's best_index_int8 over kvalues_iq4nl: the nearest level, the upper one on a tie.
// Between neighbouring levels lo < hi ggml picks hi unless x - lo < hi - x, both differences
// rounded to float32. Near each midpoint (lo + hi) / 2 (all of them have |m| >= 4.5 and both
// differences are at most 12) those differences are exact, so the choice is "x >= midpoint",
// and the index is the number of midpoints at or below x. It is found here by a branch-free
// binary search over the 15 sorted midpoints m0..m14 (each step's threshold picked by selects, so
// that everything stays in registers). Testing !(x < m) also gives ggml's answer for NaN (every
// comparison in its search is false, which ends on the top level) and for +-inf (the end levels).
GQ_FN int gq_iq4nl_index(float x) {
    const bool ge8 = !(x < -4.5f);                                              // m7
    const bool ge4 = !(x < (ge8 ? 45.5f : -57.0f));                             // m11 | m3
    const bool ge2 = !(x < (ge8 ? (ge4 ? 79.0f : 19.0f) : (ge4 ? -28.5f : -93.5f)));  // m13 m9 | m5 m1
    const float m_even = ge8 ? (ge4 ? (ge2 ? 101.0f : 61.0f) : (ge2 ? 31.5f : 7.0f))  // m14 m12 m10 m8
                             : (ge4 ? (ge2 ? -16.0f : -42.0f) : (ge2 ? -74.0f : -115.5f));  // m6 m4 m2 m0
    const bool ge1 = !(x < m_even);
    return 8 * (int)ge8 + 4 * (int)ge4 + 2 * (int)ge2 + (int)ge1;
}

// ---------------------------------------------------------------- the scale search

// 2 / S * sum of x^2 over S weights, added in order from 0 (sigma2 in ggml's impl).
template <int S>
GQ_FN float gq_iq4_sigma2(const float* x) {
    float sum = 0.0f;
    for (int j = 0; j < S; ++j) sum += x[j] * x[j];
    return sum * (2.0f / (float)S);
}

// The search weights of one 32-weight block: x^2, or qw * sqrt(sigma2 + x^2) with qw non-null.
GQ_FN void gq_iq4_weights(const float* x, const float* qw, float sigma2, float* weight) {
    if (qw) {
        GQ_UNROLL
        for (int j = 0; j < GQ_IQ4_BLOCK; ++j) weight[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
    } else {
        GQ_UNROLL
        for (int j = 0; j < GQ_IQ4_BLOCK; ++j) weight[j] = x[j] * x[j];
    }
}

// sum w q x and sum w q q over a block, q the level nearest inv_scale * x.
GQ_FN void gq_iq4_weighted_sums(const float* x, const float* weight, float inv_scale, float* sumqx,
                                float* sumq2) {
    float sqx = 0.0f;
    float sq2 = 0.0f;
    GQ_UNROLL
    for (int j = 0; j < GQ_IQ4_BLOCK; ++j) {
        const float q = gq_iq4nl_level(gq_iq4nl_index(inv_scale * x[j]));
        const float wq = weight[j] * q;
        sqx += wq * x[j];
        sq2 += wq * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

// The block's scale d (x ~ d * K[q]): 0 when max |x| < 1e-15, else the least-squares scale of the
// first of 1 + 15 trial inverse scales that fits best.
GQ_FN float gq_iq4_search_scale(const float* x, const float* weight) {
    float amax;
    const float max = gq_first_max_abs<GQ_IQ4_BLOCK>(x, &amax);
    if (amax < GQ_GROUP_MAX_EPS) return 0.0f;
    const float lowest = -127.0f;  // K[0]
    float sumqx, sumq2;
    gq_iq4_weighted_sums(x, weight, 1.0f / (-max / lowest), &sumqx, &sumq2);
    float d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int itry = -GQ_IQ4_NTRY; itry <= GQ_IQ4_NTRY; ++itry) {
        gq_iq4_weighted_sums(x, weight, (float)(itry - 127) / max, &sumqx, &sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// The 16 bytes of a 32-weight block's nibbles, each weight's level nearest inv_scale * x.
GQ_FN void gq_iq4_pack_levels(const float* x, float inv_scale, gq_u8* qs) {
    GQ_UNROLL
    for (int j = 0; j < GQ_IQ4_BLOCK / 2; ++j) {
        const int lo = gq_iq4nl_index(inv_scale * x[j]);
        const int hi = gq_iq4nl_index(inv_scale * x[j + GQ_IQ4_BLOCK / 2]);
        qs[j] = (gq_u8)(lo | (hi << 4));
    }
}

// ---------------------------------------------------------------- IQ4_NL

// One 32-weight block; qw: its 32 importance weights, or null.
GQ_FN void gq_quantize_block_iq4_nl(const float* x, const float* qw, gq_u8* out) {
    float weight[GQ_IQ4_BLOCK];
    gq_iq4_weights(x, qw, qw ? gq_iq4_sigma2<GQ_IQ4_BLOCK>(x) : 0.0f, weight);
    const float d = gq_iq4_search_scale(x, weight);
    gq_store_u16(out, gq_fp32_to_fp16(d));
    // the levels come from the float32 scale, not from its fp16 copy
    gq_iq4_pack_levels(x, d != 0.0f ? 1.0f / d : 0.0f, out + 2);
}

GQ_FN void gq_dequantize_block_iq4_nl(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    GQ_UNROLL
    for (int j = 0; j < GQ_IQ4_BLOCK / 2; ++j) {
        y[j] = gq_mul(d, gq_iq4nl_level(in[2 + j] & 0x0F));
        y[j + GQ_IQ4_BLOCK / 2] = gq_mul(d, gq_iq4nl_level(in[2 + j] >> 4));
    }
}

// ---------------------------------------------------------------- IQ4_XS, in pieces
// A super-block is quantized in three steps so that the device can give each 32-weight sub-block
// its own thread: (1) every sub-block's scale (gq_iq4_search_scale), (2) the super-block scale
// from all eight, (3) each sub-block's multiplier and nibbles, and the header.

// The super-block scale d: -1/32 of the first sub-block scale of largest magnitude.
GQ_FN float gq_iq4_xs_super_scale(const float* scales) {
    return -gq_first_max_abs<GQ_IQ4_SUBS>(scales) / 32.0f;
}

// A sub-block's multiplier of d, in [-32, 31].
GQ_FN int gq_iq4_xs_multiplier(float d, float scale) {
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    return gq_max_i(-32, gq_min_i(31, gq_nearest_int(id * scale)));
}

// d fp16 | scales_h | scales_l[4], from the super-block scale and the eight sub-block scales.
GQ_FN void gq_iq4_xs_store_header(float d, const float* scales, gq_u8* out) {
    gq_u32 scales_h = 0;
    gq_u8 scales_l[GQ_IQ4_SUBS / 2] = {0, 0, 0, 0};
    GQ_UNROLL
    for (int ib = 0; ib < GQ_IQ4_SUBS; ++ib) {
        const int biased = gq_iq4_xs_multiplier(d, scales[ib]) + 32;
        scales_l[ib / 2] |= (gq_u8)((biased & 0x0F) << (4 * (ib % 2)));
        scales_h |= (gq_u32)(biased >> 4) << (2 * ib);
    }
    gq_store_u16(out, gq_fp32_to_fp16(d));
    gq_store_u16(out + 2, (gq_u16)scales_h);
    GQ_UNROLL
    for (int k = 0; k < GQ_IQ4_SUBS / 2; ++k) out[4 + k] = scales_l[k];
}

// The 16 nibble bytes of one sub-block, whose own scale is d times its multiplier.
GQ_FN void gq_iq4_xs_pack_sub_block(const float* x, float d, float scale, gq_u8* qs) {
    const float dl = d * (float)gq_iq4_xs_multiplier(d, scale);
    gq_iq4_pack_levels(x, dl != 0.0f ? 1.0f / dl : 0.0f, qs);
}

// One 256-weight super-block, all three steps in turn; qw: its 256 importance weights, or null.
GQ_FN void gq_quantize_block_iq4_xs(const float* x, const float* qw, gq_u8* out) {
    const float sigma2 = qw ? gq_iq4_sigma2<GQ_IQ4_SUPER>(x) : 0.0f;
    float scales[GQ_IQ4_SUBS];
    float weight[GQ_IQ4_BLOCK];
    for (int ib = 0; ib < GQ_IQ4_SUBS; ++ib) {
        const float* xb = x + ib * GQ_IQ4_BLOCK;
        gq_iq4_weights(xb, qw ? qw + ib * GQ_IQ4_BLOCK : nullptr, sigma2, weight);
        scales[ib] = gq_iq4_search_scale(xb, weight);
    }
    const float d = gq_iq4_xs_super_scale(scales);
    gq_iq4_xs_store_header(d, scales, out);
    for (int ib = 0; ib < GQ_IQ4_SUBS; ++ib) {
        gq_iq4_xs_pack_sub_block(x + ib * GQ_IQ4_BLOCK, d, scales[ib], out + 8 + 16 * ib);
    }
}

// One 32-weight sub-block ib of an IQ4_XS super-block (in: the whole 136-byte block).
GQ_FN void gq_dequantize_sub_block_iq4_xs(const gq_u8* in, int ib, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const int scales_h = gq_load_u16(in + 2);
    const int ls = ((in[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((scales_h >> (2 * ib)) & 3) << 4);
    const float dl = gq_mul(d, (float)(ls - 32));
    const gq_u8* qs = in + 8 + 16 * ib;
    GQ_UNROLL
    for (int j = 0; j < GQ_IQ4_BLOCK / 2; ++j) {
        y[j] = gq_mul(dl, gq_iq4nl_level(qs[j] & 0x0F));
        y[j + GQ_IQ4_BLOCK / 2] = gq_mul(dl, gq_iq4nl_level(qs[j] >> 4));
    }
}

GQ_FN void gq_dequantize_block_iq4_xs(const gq_u8* in, float* y) {
    for (int ib = 0; ib < GQ_IQ4_SUBS; ++ib) gq_dequantize_sub_block_iq4_xs(in, ib, y + ib * GQ_IQ4_BLOCK);
}
