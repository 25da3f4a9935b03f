// ggml's ternary 256-weight formats TQ1_0 and TQ2_0 (BitNet b1.58), one block at a time: the CUDA
// kernels (ternary.cu) and the host build (host_ternary.cpp) call these same functions.
//
// Block layouts (little-endian, no padding):
//   TQ1_0 54 bytes: qs[48] | qh[4] | d fp16
//   TQ2_0 66 bytes: qs[64] | d fp16
// Every weight becomes a trit t = lroundf(x / max|x|) + 1 in {0, 1, 2} and decodes as (t - 1) * d,
// d = max |x|. TQ2_0 keeps each trit in 2 bits: byte 32 g + m holds weights 128 g + 32 l + m at
// bits 2 l. TQ1_0 packs five trits per byte as a base-3 number (first trit most significant)
// scaled up to the byte range with ceil(n * 256 / 243): bytes 0..31 hold weights m + 32 n,
// bytes 32..47 weights 160 + m + 16 n, and qh[j] the four weights 240 + j + 4 m, shifted up one
// trit. ggml ignores the importance matrix for both.
#pragma once

#include "common.cuh"

#define GQ_TQ_BLOCK 256
#define GQ_TQ1_0_BYTES 54
#define GQ_TQ2_0_BYTES 66

// amax = MAX(amax, |x|) over the block from 0, with C's MAX (a > b ? a : b): a NaN is taken and
// then dropped by the next value.
GQ_FN float gq_tq_amax(const float* x) {
    float amax = 0.0f;
    for (int j = 0; j < GQ_TQ_BLOCK; ++j) amax = gq_max_f(amax, fabsf(x[j]));
    return amax;
}

// `int xi = lroundf(v) + 1` as x86-64 computes it: lroundf returns a 64-bit long (LONG_MIN when
// v is NaN, infinite or out of range), and the sum is narrowed to its low 32 bits, so a non-finite
// v gives the zero trit 1.
GQ_FN int gq_tq_trit(float v) {
    const float r = gq_roundf(v);
    const bool in_range = r > -9.2233720e18f && r < 9.2233720e18f;
    const gq_i64 converted = (gq_i64)(in_range ? r : 0.0f);  // selects, not branches: vectorizable
    const gq_i64 l = in_range ? converted : (gq_i64)(1ull << 63);
    return (int)(gq_u32)((unsigned long long)l + 1ull);
}

// One TQ1_0 byte: the base-3 number of `count` trits of x[0], x[stride], ... (the first most
// significant) as ggml's uint8_t q builds it, times 3 once more for qh (shift_one), scaled to the
// byte range by ceiling division.
GQ_FN gq_u8 gq_tq1_pack(const float* x, int stride, int count, bool shift_one, float id) {
    gq_u8 q = 0;
    for (int n = 0; n < count; ++n) q = (gq_u8)(q * 3 + gq_tq_trit(x[n * stride] * id));
    if (shift_one) q = (gq_u8)(q * 3);
    return (gq_u8)(((int)q * 256 + 242) / 243);
}

GQ_FN void gq_quantize_block_tq1_0(const float* x, gq_u8* out) {
    const float d = gq_tq_amax(x);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int m = 0; m < 32; ++m) out[m] = gq_tq1_pack(x + m, 32, 5, false, id);
    for (int m = 0; m < 16; ++m) out[32 + m] = gq_tq1_pack(x + 160 + m, 16, 5, false, id);
    for (int j = 0; j < 4; ++j) out[48 + j] = gq_tq1_pack(x + 240 + j, 4, 4, true, id);
    gq_store_u16(out + 52, gq_fp32_to_fp16(d));
}

GQ_FN void gq_quantize_block_tq2_0(const float* x, gq_u8* out) {
    const float d = gq_tq_amax(x);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int g = 0; g < 2; ++g) {
        for (int m = 0; m < 32; ++m) {
            gq_u8 q = 0;
            GQ_UNROLL
            for (int l = 0; l < 4; ++l) q = (gq_u8)(q + ((gq_tq_trit(x[128 * g + 32 * l + m] * id) & 3) << (2 * l)));
            out[32 * g + m] = q;
        }
    }
    gq_store_u16(out + 64, gq_fp32_to_fp16(d));
}

// Trit n (0 = most significant) of a TQ1_0 byte: the top base-3 digit of (byte * 3^n mod 256) * 3.
GQ_FN float gq_tq1_trit_value(gq_u8 byte, int n) {
    const int pow3[5] = {1, 3, 9, 27, 81};
    const gq_u8 q = (gq_u8)(byte * pow3[n]);
    return (float)((((int)q * 3) >> 8) - 1);
}

GQ_FN void gq_dequantize_block_tq1_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in + 52));
    GQ_UNROLL
    for (int n = 0; n < 5; ++n) {
        for (int m = 0; m < 32; ++m) y[32 * n + m] = gq_mul(gq_tq1_trit_value(in[m], n), d);
    }
    GQ_UNROLL
    for (int n = 0; n < 5; ++n) {
        for (int m = 0; m < 16; ++m) y[160 + 16 * n + m] = gq_mul(gq_tq1_trit_value(in[32 + m], n), d);
    }
    GQ_UNROLL
    for (int n = 0; n < 4; ++n) {
        for (int j = 0; j < 4; ++j) y[240 + 4 * n + j] = gq_mul(gq_tq1_trit_value(in[48 + j], n), d);
    }
}

GQ_FN void gq_dequantize_block_tq2_0(const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in + 64));
    for (int g = 0; g < 2; ++g) {
        GQ_UNROLL
        for (int l = 0; l < 4; ++l) {
            for (int m = 0; m < 32; ++m) {
                y[128 * g + 32 * l + m] = gq_mul((float)(((in[32 * g + m] >> (2 * l)) & 3) - 1), d);
            }
        }
    }
}
