// ggml's E2M1 4-bit float formats MXFP4 (32-weight blocks, one E8M0 power-of-two scale) and NVFP4
// (64-weight blocks, one UE4M3 scale per 16 weights), one block at a time: the CUDA kernels
// (fp4.cu) and the host build (host_fp4.cpp) call these same functions.
//
// Block layouts (no padding):
//   MXFP4 17 bytes: e (E8M0) | qs[16]
//   NVFP4 36 bytes: d[4] (UE4M3, one per 16 weights) | qs[32] (8 bytes per 16 weights)
// ggml keeps the E2M1 levels doubled (kvalues_mxfp4: 0 1 2 3 4 6 8 12, then 0 and the negatives)
// and halves the scales to match. In each group of 2h weights (32 for MXFP4, 16 for NVFP4) byte j
// holds weight j in its low nibble and weight j + h in its high nibble. Every weight takes the
// first level of least |level * d - x|. ggml ignores the importance matrix for both.
#pragma once

#include "common.cuh"

#define GQ_MXFP4_BLOCK 32
#define GQ_NVFP4_BLOCK 64
#define GQ_NVFP4_SUB 16
#define GQ_MXFP4_BYTES 17
#define GQ_NVFP4_BYTES 36

// kvalues_mxfp4[index] as a float: magnitudes 0 1 2 3 4 6 8 12 packed in 4-bit fields (a lookup
// that stays in registers on the device), negative for index >= 8 (index 8 is +0, as in ggml).
GQ_FN float gq_fp4_level(int index) {
    const int magnitude = (int)((0xC8643210u >> (4 * (index & 7))) & 0x0Fu);
    return (float)((index & 8) ? -magnitude : magnitude);
}

// ggml's best_index_mxfp4: the first index of least |level * d - x| (strict comparison), over the
// 16 entries in table order. Unrolled, so that the levels are constants.
GQ_FN int gq_fp4_best_index(float x, float d) {
    int best_index = 0;
    float best_err = fabsf(gq_fp4_level(0) * d - x);
    GQ_UNROLL
    for (int i = 1; i < 16; ++i) {
        const float err = fabsf(gq_fp4_level(i) * d - x);
        if (err < best_err) {
            best_index = i;
            best_err = err;
        }
    }
    return best_index;
}

// `if (amax < fabsf(v)) amax = fabsf(v)` from 0: the maximum |x|, a NaN never taken.
template <int N>
GQ_FN float gq_fp4_amax(const float* x) {
    float amax = 0.0f;
    GQ_UNROLL
    for (int j = 0; j < N; ++j) {
        if (amax < fabsf(x[j])) amax = fabsf(x[j]);
    }
    return amax;
}

// The nibble bytes of 2h weights against one scale d.
template <int H>
GQ_FN void gq_fp4_pack(const float* x, float d, gq_u8* qs) {
    GQ_UNROLL
    for (int j = 0; j < H; ++j) qs[j] = (gq_u8)(gq_fp4_best_index(x[j], d) | (gq_fp4_best_index(x[j + H], d) << 4));
}

// ---------------------------------------------------------------- MXFP4

// ggml_e8m0_to_fp32_half: 2^(e - 128), a subnormal for e < 2.
GQ_FN float gq_e8m0_to_fp32_half(gq_u8 e) {
    return gq_f32_from_bits(e < 2 ? 0x00200000u << e : (gq_u32)(e - 1) << 23);
}

// The number of significant bits of v (0 for 0).
GQ_FN int gq_bit_length(gq_u32 v) {
#if defined(__CUDACC__)
    return 32 - __clz((int)v);
#else
    return v ? 32 - __builtin_clz(v) : 0;
#endif
}

// floorf(log2f(a)) for a > 0 (finite or +inf) as ggml's reference build computes it: log2f rounded
// correctly to float32, so that the floats just below 2^D whose log2 rounds up to the integer D
// give D rather than D - 1. Computed exactly from the bits, without a math library: a with p
// significant bits lies k = 2^p - s steps of its own precision below 2^D (s its significand), and
// log2 a = D - k 2^-p / ln 2 (to first order) rounds up to D when that gap is under half the
// float32 spacing u = 2^(g - 23) just below D, i.e. when k <= floor(ln 2 * 2^(g + p - 24)). That
// bound is never within 0.09 of an integer, so the first-order form decides every case (checked
// against a 200-bit log2 on every binade). floor(ln 2 * 2^n) for n <= 16 is the top n bits of
// ln 2 = 0.1011000101110010...b.
GQ_FN float gq_floor_log2f(float a) {
    const gq_u32 bits = gq_f32_bits(a);
    const int biased = (int)((bits >> 23) & 0xFFu);
    if (biased == 0xFF) return a;  // +inf stays inf
    gq_u32 significand;
    int precision;
    int exponent;  // floor(log2 a), exact
    if (biased != 0) {
        significand = (bits & 0x007FFFFFu) | 0x00800000u;
        precision = 24;
        exponent = biased - 127;
    } else {  // subnormal: fewer significant bits
        significand = bits & 0x007FFFFFu;
        precision = gq_bit_length(significand);
        exponent = precision - 1 - 149;
    }
    const int next = exponent + 1;  // D
    if (next == 0) return (float)exponent;  // floats below 0 are far too close to 0 to round to it
    // g: log2 of the float32 spacing below D, plus 23 (below 1 the spacing is 2^-24)
    const int g = next == 1 ? -1 : gq_bit_length((gq_u32)(next > 0 ? next - 1 : -next)) - 1;
    const int shift = g + precision - 24;
    const gq_u32 max_steps = shift <= 0 ? 0u : 0xB172u >> (16 - shift);
    const gq_u32 steps = (1u << precision) - significand;
    return (float)(steps <= max_steps ? next : exponent);
}

GQ_FN void gq_quantize_block_mxfp4(const float* x, gq_u8* out) {
    const float amax = gq_fp4_amax<GQ_MXFP4_BLOCK>(x);
    // (uint8_t) of the float, as x86 converts it: through a 32-bit int, keeping the low byte
    const gq_u8 e = amax > 0.0f ? (gq_u8)gq_cast_u8(gq_floor_log2f(amax) - 2.0f + 127.0f) : (gq_u8)0;
    out[0] = e;
    gq_fp4_pack<GQ_MXFP4_BLOCK / 2>(x, gq_e8m0_to_fp32_half(e), out + 1);
}

// (Plain products here and in NVFP4: their scales are finite, so no product is NaN; see gq_mul.)
GQ_FN void gq_dequantize_block_mxfp4(const gq_u8* in, float* y) {
    const float d = gq_e8m0_to_fp32_half(in[0]);
    GQ_UNROLL
    for (int j = 0; j < GQ_MXFP4_BLOCK / 2; ++j) {
        y[j] = gq_fp4_level(in[1 + j] & 0x0F) * d;
        y[j + GQ_MXFP4_BLOCK / 2] = gq_fp4_level(in[1 + j] >> 4) * d;
    }
}

// ---------------------------------------------------------------- NVFP4

// ggml_ue4m3_to_fp32 (already halved, like the doubled levels): bit 7 is ignored; 0 and 0x7F
// decode as 0; exponent field 0 is subnormal (m * 2^-9), else (1 + m/8) * 2^(e - 7). Built from
// bits: every value is exact.
GQ_FN float gq_ue4m3_to_fp32(gq_u8 x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const gq_u32 exponent = (x >> 3) & 0x0Fu;
    const gq_u32 mantissa = x & 0x07u;
    if (exponent == 0) return (float)mantissa * 0.0009765625f;  // m * 2^-9 * 0.5
    return gq_f32_from_bits(((exponent + 119u) << 23) | (mantissa << 20));  // 2^(e - 7) * 0.5
}

// ggml_fp32_to_ue4m3: 0 for x <= 0 or NaN; clamps at 448; the mantissa's top 3 bits rounded half
// up on the next bit (a carry bumps the exponent); 0x7E past the top; subnormals as
// (int)(x * 512 + 0.5) in float32, clamped to 1..7 or 0.
GQ_FN gq_u8 gq_fp32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const gq_u32 bits = gq_f32_bits(x);
    int exponent = (int)((bits >> 23) & 0xFFu) - 127 + 7;
    if (exponent <= 0) {
        int mantissa = (int)(x * 512.0f + 0.5f);
        if (mantissa > 7) mantissa = 7;
        return mantissa < 1 ? (gq_u8)0 : (gq_u8)mantissa;
    }
    if (exponent >= 15) return 0x7E;
    int mantissa = (int)((bits >> 20) & 7u) + (int)((bits >> 19) & 1u);
    if (mantissa > 7) {
        mantissa = 0;
        exponent += 1;
        if (exponent >= 15) return 0x7E;
    }
    return (gq_u8)((exponent << 3) | mantissa);
}

// One 16-weight NVFP4 group: its scale byte, and its 8 nibble bytes at qs.
GQ_FN gq_u8 gq_quantize_group_nvfp4(const float* x, gq_u8* qs) {
    const gq_u8 ue = gq_fp32_to_ue4m3(gq_fp4_amax<GQ_NVFP4_SUB>(x) / 6.0f);
    gq_fp4_pack<GQ_NVFP4_SUB / 2>(x, gq_ue4m3_to_fp32(ue), qs);
    return ue;
}

GQ_FN void gq_quantize_block_nvfp4(const float* x, gq_u8* out) {
    GQ_UNROLL
    for (int s = 0; s < GQ_NVFP4_BLOCK / GQ_NVFP4_SUB; ++s) {
        out[s] = gq_quantize_group_nvfp4(x + GQ_NVFP4_SUB * s, out + 4 + (GQ_NVFP4_SUB / 2) * s);
    }
}

GQ_FN void gq_dequantize_block_nvfp4(const gq_u8* in, float* y) {
    GQ_UNROLL
    for (int s = 0; s < GQ_NVFP4_BLOCK / GQ_NVFP4_SUB; ++s) {
        const float d = gq_ue4m3_to_fp32(in[s]);
        const gq_u8* qs = in + 4 + (GQ_NVFP4_SUB / 2) * s;
        float* ys = y + GQ_NVFP4_SUB * s;
        GQ_UNROLL
        for (int j = 0; j < GQ_NVFP4_SUB / 2; ++j) {
            ys[j] = gq_fp4_level(qs[j] & 0x0F) * d;
            ys[j + GQ_NVFP4_SUB / 2] = gq_fp4_level(qs[j] >> 4) * d;
        }
    }
}
