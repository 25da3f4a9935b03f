// ggml's legacy 32-weight block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), one block at a time: the
// same functions run in the CUDA kernels (legacy.cu) and in the host build (host_legacy.cpp).
//
// Block layouts (little-endian, no padding):
//   Q4_0 18 bytes: d fp16 | qs[16]              x = (q - 8) * d
//   Q4_1 20 bytes: d fp16 | m fp16 | qs[16]     x = q * d + m
//   Q5_0 22 bytes: d fp16 | qh u32 | qs[16]     x = (q - 16) * d, q's 5th bit in qh
//   Q5_1 24 bytes: d fp16 | m fp16 | qh u32 | qs[16]
//   Q8_0 34 bytes: d fp16 | qs[32] int8         x = q * d
// qs[j] holds element j in its low nibble and element j + 16 in its high nibble; bit j of qh is
// the 5th bit of element j.
//
// Without an importance matrix ggml uses the plain min/max reference quantizers. With one, Q4_0
// and Q5_0 fit a scale with make_qx_quants and Q4_1 and Q5_1 a scale and min with make_qkx3_quants,
// weighting element j by qw[j] * sqrt(sigma2 + x[j]^2), sigma2 being the row's mean square
// (see gq_row_sigma2). Q8_0 ignores the importance matrix.
#pragma once

#include "common.cuh"

#define GQ_QK 32
#define GQ_Q4_0_BYTES 18
#define GQ_Q4_1_BYTES 20
#define GQ_Q5_0_BYTES 22
#define GQ_Q5_1_BYTES 24
#define GQ_Q8_0_BYTES 34

// ---------------------------------------------------------------- shared pieces

// The block's first zero, -0 or +0 as it is stored (+0 if there is none).
GQ_FN float gq_first_zero(const float* x) {
    for (int j = 0; j < GQ_QK; ++j) {
        if (x[j] == 0.0f) return x[j];
    }
    return 0.0f;
}

// ggml's `if (x[j] < min) min = x[j]; if (x[j] > max) max = x[j];` from +-FLT_MAX. The extremes
// are found in 8 lanes side by side (order does not change an extreme, and each lane skips NaN as
// the chain does); only a zero extreme needs the chain's choice between -0 and +0, the first zero.
GQ_FN void gq_min_max(const float* x, float* min_out, float* max_out) {
    float lo[8];
    float hi[8];
    GQ_UNROLL
    for (int k = 0; k < 8; ++k) {
        lo[k] = 3.402823466e+38f;
        hi[k] = -3.402823466e+38f;
    }
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; j += 8) {
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) {
            lo[k] = x[j + k] < lo[k] ? x[j + k] : lo[k];
            hi[k] = x[j + k] > hi[k] ? x[j + k] : hi[k];
        }
    }
    float min = lo[0];
    float max = hi[0];
    GQ_UNROLL
    for (int k = 1; k < 8; ++k) {
        min = lo[k] < min ? lo[k] : min;
        max = hi[k] > max ? hi[k] : max;
    }
    if (min == 0.0f) min = gq_first_zero(x);
    if (max == 0.0f) max = gq_first_zero(x);
    *min_out = min;
    *max_out = max;
}

// The importance weights of one block: qw[j] * sqrt(sigma2 + x[j]^2).
GQ_FN void gq_legacy_weights(const float* x, const float* qw, float sigma2, float* weight) {
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) weight[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

// Q4 formats: ggml ORs the two byte values unmasked (they are 0..15 unless the input is not finite).
GQ_FN void gq_pack_q4(const int* q, gq_u8* qs) {
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) qs[j] = (gq_u8)((q[j] & 0xFF) | ((q[j + GQ_QK / 2] & 0xFF) << 4));
}

// Q5 formats: the low nibbles here, the 5th bits in qh (gq_fifth_bits).
GQ_FN void gq_pack_q5(const int* q, gq_u8* qs) {
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) qs[j] = (gq_u8)((q[j] & 0x0F) | ((q[j + GQ_QK / 2] & 0x0F) << 4));
}

GQ_FN gq_u32 gq_fifth_bits(const int* q) {
    gq_u32 qh = 0;
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) qh |= (gq_u32)((q[j] >> 4) & 1) << j;
    return qh;
}

// ---------------------------------------------------------------- quantize: reference (no imatrix)

GQ_FN void gq_quantize_block_q4_0(const float* x, gq_u8* out) {
    const float max = gq_first_max_abs<GQ_QK>(x);
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = gq_min_i(15, gq_cast_i8(x[j] * id + 8.5f)) & 0xFF;
    gq_pack_q4(q, out + 2);
}

GQ_FN void gq_quantize_block_q4_1(const float* x, gq_u8* out) {
    float min, max;
    gq_min_max(x, &min, &max);
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    gq_store_u16(out + 2, gq_fp32_to_fp16(min));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = gq_min_i(15, gq_cast_i8((x[j] - min) * id + 0.5f)) & 0xFF;
    gq_pack_q4(q, out + 4);
}

GQ_FN void gq_quantize_block_q5_0(const float* x, gq_u8* out) {
    const float max = gq_first_max_abs<GQ_QK>(x);
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = gq_min_i(31, gq_cast_i8(x[j] * id + 16.5f)) & 0xFF;
    gq_store_u32(out + 2, gq_fifth_bits(q));
    gq_pack_q5(q, out + 6);
}

GQ_FN void gq_quantize_block_q5_1(const float* x, gq_u8* out) {
    float min, max;
    gq_min_max(x, &min, &max);
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    gq_store_u16(out + 2, gq_fp32_to_fp16(min));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = gq_cast_u8((x[j] - min) * id + 0.5f);
    gq_store_u32(out + 4, gq_fifth_bits(q));
    gq_pack_q5(q, out + 8);
}

GQ_FN void gq_quantize_block_q8_0(const float* x, gq_u8* out) {
    float amax = 0.0f;
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) amax = gq_max_f(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) out[2 + j] = (gq_u8)gq_cast_i8(gq_roundf(x[j] * id));
}

// ---------------------------------------------------------------- quantize: with an importance matrix

GQ_FN void gq_quantize_block_q4_0_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
    float weight[GQ_QK];
    gq_i8 L[GQ_QK];
    gq_legacy_weights(x, qw, sigma2, weight);
    const float d = gq_make_qx_quants<GQ_QK>(8, x, L, 1, weight);
    gq_store_u16(out, gq_fp32_to_fp16(d));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = L[j];
    gq_pack_q4(q, out + 2);
}

GQ_FN void gq_quantize_block_q4_1_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
    float weight[GQ_QK];
    gq_u8 L[GQ_QK];
    float the_min;
    gq_legacy_weights(x, qw, sigma2, weight);
    const float d = gq_make_qkx3_quants<GQ_QK>(15, x, weight, L, &the_min, -0.9f, 0.05f, 36, false);
    gq_store_u16(out, gq_fp32_to_fp16(d));
    gq_store_u16(out + 2, gq_fp32_to_fp16(-the_min));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = L[j];
    gq_pack_q4(q, out + 4);
}

GQ_FN void gq_quantize_block_q5_0_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
    float weight[GQ_QK];
    gq_i8 L[GQ_QK];
    gq_legacy_weights(x, qw, sigma2, weight);
    const float d = gq_make_qx_quants<GQ_QK>(16, x, L, 1, weight);
    gq_store_u16(out, gq_fp32_to_fp16(d));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = L[j];
    gq_store_u32(out + 2, gq_fifth_bits(q));
    gq_pack_q5(q, out + 6);
}

GQ_FN void gq_quantize_block_q5_1_weighted(const float* x, const float* qw, float sigma2, gq_u8* out) {
    float weight[GQ_QK];
    gq_u8 L[GQ_QK];
    float the_min;
    gq_legacy_weights(x, qw, sigma2, weight);
    const float d = gq_make_qkx3_quants<GQ_QK>(31, x, weight, L, &the_min, -0.9f, 0.05f, 36, false);
    gq_store_u16(out, gq_fp32_to_fp16(d));
    gq_store_u16(out + 2, gq_fp32_to_fp16(-the_min));
    int q[GQ_QK];
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) q[j] = L[j];
    gq_store_u32(out + 4, gq_fifth_bits(q));
    gq_pack_q5(q, out + 8);
}

// ---------------------------------------------------------------- dequantize

GQ_FN void gq_dequantize_block_q4_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) {
        y[j] = gq_mul((float)((in[2 + j] & 0x0F) - 8), d);
        y[j + GQ_QK / 2] = gq_mul((float)((in[2 + j] >> 4) - 8), d);
    }
}

GQ_FN void gq_dequantize_block_q4_1(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const float m = gq_fp16_to_fp32(gq_load_u16(in + 2));
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) {
        y[j] = gq_add(gq_mul((float)(in[4 + j] & 0x0F), d), m);
        y[j + GQ_QK / 2] = gq_add(gq_mul((float)(in[4 + j] >> 4), d), m);
    }
}

GQ_FN void gq_dequantize_block_q5_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const gq_u32 qh = gq_load_u32(in + 2);
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) {
        const int lo = (in[6 + j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (in[6 + j] >> 4) | (int)(((qh >> (j + GQ_QK / 2)) & 1u) << 4);
        y[j] = gq_mul((float)(lo - 16), d);
        y[j + GQ_QK / 2] = gq_mul((float)(hi - 16), d);
    }
}

GQ_FN void gq_dequantize_block_q5_1(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const float m = gq_fp16_to_fp32(gq_load_u16(in + 2));
    const gq_u32 qh = gq_load_u32(in + 4);
    GQ_UNROLL
    for (int j = 0; j < GQ_QK / 2; ++j) {
        const int lo = (in[8 + j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (in[8 + j] >> 4) | (int)(((qh >> (j + GQ_QK / 2)) & 1u) << 4);
        y[j] = gq_add(gq_mul((float)lo, d), m);
        y[j + GQ_QK / 2] = gq_add(gq_mul((float)hi, d), m);
    }
}

GQ_FN void gq_dequantize_block_q8_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    GQ_UNROLL
    for (int j = 0; j < GQ_QK; ++j) y[j] = gq_mul((float)(gq_i8)in[2 + j], d);
}
