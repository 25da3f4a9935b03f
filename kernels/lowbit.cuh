// ggml's Q1_0 (128-weight blocks) and Q2_0 (64-weight blocks), one block at a time: the CUDA
// kernels (lowbit.cu) and the host build (host_lowbit.cpp) call these same functions.
//
// Block layouts (little-endian, no padding):
//   Q1_0 18 bytes: d fp16 | qs[16]   bit j % 8 of qs[j / 8]: x >= 0; decodes as +d or -d,
//                                    d = mean |x| (summed in order)
//   Q2_0 18 bytes: d fp16 | qs[16]   bits 2 (j % 4) of qs[j / 4]: clamp(roundf(x / d), -1, 2) + 1;
//                                    decodes as (q - 1) * d, d = max |x|
// ggml ignores the importance matrix for both.
#pragma once

#include "common.cuh"

#define GQ_Q1_0_BLOCK 128
#define GQ_Q2_0_BLOCK 64
#define GQ_Q1_0_BYTES 18
#define GQ_Q2_0_BYTES 18

GQ_FN void gq_quantize_block_q1_0(const float* x, gq_u8* out) {
    float sum_abs = 0.0f;
    for (int j = 0; j < GQ_Q1_0_BLOCK; ++j) sum_abs += fabsf(x[j]);
    gq_store_u16(out, gq_fp32_to_fp16(sum_abs / 128.0f));
    for (int k = 0; k < GQ_Q1_0_BLOCK / 8; ++k) {
        gq_u8 bits = 0;
        GQ_UNROLL
        for (int b = 0; b < 8; ++b) bits |= (gq_u8)((x[8 * k + b] >= 0.0f ? 1 : 0) << b);  // NaN: 0
        out[2 + k] = bits;
    }
}

GQ_FN void gq_dequantize_block_q1_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const float neg_d = gq_neg(d);
    for (int j = 0; j < GQ_Q1_0_BLOCK; ++j) y[j] = ((in[2 + j / 8] >> (j % 8)) & 1) ? d : neg_d;
}

GQ_FN void gq_quantize_block_q2_0(const float* x, gq_u8* out) {
    float amax = 0.0f;
    for (int j = 0; j < GQ_Q2_0_BLOCK; ++j) {
        const float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    const float id = amax > 0.0f ? 1.0f / amax : 0.0f;
    gq_store_u16(out, gq_fp32_to_fp16(amax));
    for (int k = 0; k < GQ_Q2_0_BLOCK / 4; ++k) {
        gq_u8 fields = 0;
        GQ_UNROLL
        for (int f = 0; f < 4; ++f) {
            // (int)roundf of an infinite or NaN product is INT_MIN on x86: level 0 after the clamp
            const int q = gq_max_i(0, gq_min_i(3, gq_trunc_to_int(gq_roundf(x[4 * k + f] * id)) + 1));
            fields |= (gq_u8)(q << (2 * f));
        }
        out[2 + k] = fields;
    }
}

GQ_FN void gq_dequantize_block_q2_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int j = 0; j < GQ_Q2_0_BLOCK; ++j) y[j] = gq_mul((float)(((in[2 + j / 4] >> (2 * (j % 4))) & 3) - 1), d);
}
