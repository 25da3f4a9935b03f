// ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), one super-block of 256 weights at a time: the
// same functions run in the CUDA kernels (kquants.cu) and in the host build (host_kquants.cpp).
//
// Super-block layouts (little-endian, no padding; ggml-common.h):
//   Q2_K  84 bytes: scales[16] (4-bit scale | 4-bit min << 4) | qs[64] (2 bits) | d fp16 | dmin fp16
//   Q3_K 110 bytes: hmask[32] (3rd bit) | qs[64] (low 2 bits) | scales[12] (16 x 6 bits) | d fp16
//   Q4_K 144 bytes: d fp16 | dmin fp16 | scales[12] (8 scales + 8 mins, 6 bits) | qs[128] (4 bits)
//   Q5_K 176 bytes: d fp16 | dmin fp16 | scales[12] | qh[32] (5th bit) | qs[128] (low 4 bits)
//   Q6_K 210 bytes: ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 | d fp16
//
// Every quantizer has ggml's two paths: without an importance matrix ggml runs
// quantize_row_qN_K_ref, with one quantize_row_qN_K_impl; they search the sub-block scales
// differently (the *_weighted functions are the _impl paths). Both then quantize the sub-block
// scales against one fp16 super-block scale, read that fp16 value back, and requantize every
// sub-block whose stored scale is not zero (a zero one keeps the levels of its search).
//
// Each quantizer is written per sub-block where it can be: a sub-block's search (gq_q2_k_sub_block,
// gq_k4_sub_block, ... : the values, weights and search state of 16 or 32 weights), then the
// super-block's scale quantization from all sub-blocks' results (gq_q2_k_scales, gq_k4_scales,
// ...), then each sub-block's levels from the stored scales. The host build runs the three steps
// in turn per super-block (gq_quantize_superblock_*); the GPU gives each sub-block a thread, and
// the threads of a super-block exchange their results by shuffles (kquants.cu).
#pragma once

#include "common.cuh"

#define GQ_QK_K 256
#define GQ_Q2_K_BYTES 84
#define GQ_Q3_K_BYTES 110
#define GQ_Q4_K_BYTES 144
#define GQ_Q5_K_BYTES 176
#define GQ_Q6_K_BYTES 210

// ---------------------------------------------------------------- small pieces

// C's store of an int into int8_t: keeps the low byte, read back signed.
GQ_FN int gq_wrap_i8(int v) { return (int)(gq_i8)(gq_u8)(gq_u32)v; }

GQ_FN int gq_clamp_i(int v, int lo, int hi) { return gq_max_i(lo, gq_min_i(hi, v)); }

// The sum of x[j]^2 over a super-block, added in index order from 0 (ggml's _impl sigma2).
GQ_FN float gq_superblock_sum_x2(const float* x) {
    float sum = 0.0f;
    for (int c = 0; c < GQ_QK_K; c += 32) {
        float v[32];
        gq_load_floats<32>(x + c, v);
        GQ_UNROLL
        for (int k = 0; k < 32; ++k) sum += v[k] * v[k];
    }
    return sum;
}

// The importance weights of a sub-block, qw * sqrt(sigma2 + x^2), and their sum added from 0.
template <int N>
GQ_FN float gq_imatrix_weights(const float* xs, const float* qw, float sigma2, float* w) {
    float qws[N];
    gq_load_floats<N>(qw, qws);
    float sum = 0.0f;
    GQ_UNROLL
    for (int l = 0; l < N; ++l) {
        w[l] = qws[l] * sqrtf(sigma2 + xs[l] * xs[l]);
        sum += w[l];
    }
    return sum;
}

// The level of x in 0..nmax with a sub-block's stored scale d (not 0) and min dm, as every K-quant
// with a min requantizes: nearest_int((x + dm) / d), clamped.
GQ_FN int gq_requantize_level(float x, float dm, float d, int nmax) {
    return gq_clamp_i(gq_nearest_int((x + dm) / d), 0, nmax);
}

// ---------------------------------------------------------------- scale searches (K-quants only)

// ggml's make_qkx2_quants (asymmetric fit, explicit weights, search over nstep+1 inverse scales,
// the min moving with each accepted candidate) performs exactly the operations of its
// make_qkx3_quants given non-null weights: the only textual difference, `max == min` against
// `max <= min`, cannot differ because max >= min always holds there (or both are NaN). So the
// _ref paths of Q2_K, Q4_K and Q5_K run gq_qkx3_search (common.cuh) too.

// ggml's make_q3_quants with do_rmse: symmetric levels -nmax..nmax-1 from -nmax/max (max being the
// first value of largest magnitude), weights x^2, then up to 5 passes of coordinate descent that
// move one level at a time while sumlx^2/suml2 grows. L gets level + nmax. Returns the scale.
template <int N>
GQ_FN float gq_make_q3_quants(int nmax, const float* x, gq_i8* L) {
    float amax;
    const float max = gq_first_max_abs<N>(x, &amax);
    if (amax < GQ_GROUP_MAX_EPS) {
        GQ_UNROLL
        for (int i = 0; i < N; ++i) L[i] = 0;
        return 0.0f;
    }
    const float iscale = (float)(-nmax) / max;
    int level[N];  // in registers during the descent; L is written once at the end
    float sumlx = 0.0f;
    float suml2 = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) {
        const int l = gq_clamp_i(gq_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        level[i] = l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        bool changed = false;
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)level[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * (float)level[i] * (float)level[i];
                const int new_l = gq_clamp_i(gq_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != level[i]) {
                    slx += w * x[i] * (float)new_l;
                    sl2 += w * (float)new_l * (float)new_l;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        level[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if (!changed) break;
    }
    GQ_UNROLL
    for (int i = 0; i < N; ++i) L[i] = (gq_i8)(level[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ggml's make_qp_quants: levels 0..nmax for non-negative x (the sub-block scales or mins of a
// super-block) with weights qw. The best of 9 inverse scales around nmax/max by weighted squared
// error, then coordinate descent as in make_q3_quants. L is uint8 as in C: a negative level wraps,
// and the wrapped value is what later steps (and the caller) read. Returns the scale.
template <int N>
GQ_FN float gq_make_qp_quants(int nmax, const float* x, gq_u8* L, const float* qw) {
    float max = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) max = gq_max_f(max, x[i]);
    if (max < GQ_GROUP_MAX_EPS) {
        GQ_UNROLL
        for (int i = 0; i < N; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = (float)nmax / max;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) L[i] = (gq_u8)gq_nearest_int(iscale * x[i]);
    const float scale = 1.0f / iscale;
    float best_mse = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) {
        const float diff = x[i] - scale * (float)L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * (float)is + (float)nmax) / max;
        const float scale_is = 1.0f / iscale_is;
        float mse = 0.0f;
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const int l = gq_min_i(nmax, gq_nearest_int(iscale_is * x[i]));
            const float diff = x[i] - scale_is * (float)l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0.0f;
    float suml2 = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) {
        const int l = gq_min_i(nmax, gq_nearest_int(iscale * x[i]));
        L[i] = (gq_u8)l;
        sumlx += qw[i] * x[i] * (float)l;  // the unwrapped level here, the stored one below
        suml2 += qw[i] * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        bool changed = false;
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float w = qw[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            if (slx > 0.0f && sl2 > 0.0f) {
                const int new_l = gq_min_i(nmax, gq_nearest_int(x[i] * sl2 / slx));
                if (new_l != (int)L[i]) {
                    slx += w * x[i] * (float)new_l;
                    sl2 += w * (float)new_l * (float)new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (gq_u8)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ---------------------------------------------------------------- packing

// 256 levels 0..3 -> 64 bytes: byte 32h + l holds L[128h + 32k + l] at bits 2k (Q2_K, Q3_K).
GQ_FN void gq_pack_2bit(const gq_u8* L, gq_u8* qs) {
    for (int h = 0; h < 2; ++h) {
        const gq_u8* Lh = L + 128 * h;
        GQ_UNROLL
        for (int l = 0; l < 32; ++l) {
            qs[32 * h + l] = (gq_u8)(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) | (Lh[l + 96] << 6));
        }
    }
}

// Q3_K's 16 six-bit values (0..63) -> 12 bytes: low nibbles of j and j + 8 in byte j % 8, the top
// two bits of j at bits 2*(j/4) of byte 8 + j % 4.
GQ_FN void gq_pack_scales_q3(const int* v, gq_u8* s) {
    GQ_UNROLL
    for (int k = 0; k < 12; ++k) s[k] = 0;
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) {
        if (j < 8) {
            s[j] = (gq_u8)(v[j] & 0xF);
        } else {
            s[j - 8] = (gq_u8)(s[j - 8] | ((v[j] & 0xF) << 4));
        }
        s[8 + j % 4] = (gq_u8)(s[8 + j % 4] | ((v[j] >> 4) << (2 * (j / 4))));
    }
}

// The six-bit value j (0..63) of Q3_K's packed scales.
GQ_FN int gq_scale_q3(const gq_u8* s, int j) {
    const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    return low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
}

// Q4_K/Q5_K: 8 scales and 8 mins (6 bits meant; ggml stores whatever byte it has) -> 12 bytes.
// Bytes 0-3: scale j, bytes 4-7: min j (j < 4), each with the top 2 bits of scale/min j + 4 in
// bits 6-7; bytes 8-11: low nibble of scale j + 4 | low nibble of min j + 4 << 4.
GQ_FN void gq_pack_scales_k4(const gq_u8* ls, const gq_u8* lm, gq_u8* s) {
    GQ_UNROLL
    for (int j = 0; j < 4; ++j) {
        s[j] = ls[j];
        s[j + 4] = lm[j];
    }
    GQ_UNROLL
    for (int j = 4; j < 8; ++j) {
        s[j + 4] = (gq_u8)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        s[j - 4] = (gq_u8)(s[j - 4] | ((ls[j] >> 4) << 6));
        s[j] = (gq_u8)(s[j] | ((lm[j] >> 4) << 6));
    }
}

// ggml's get_scale_min_k4: the scale and the min of sub-block j from the 12 packed bytes.
GQ_FN void gq_scale_min_k4(int j, const gq_u8* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// ---------------------------------------------------------------- Q2_K

// The last steps of both Q2_K paths: requantize with the stored scales, then write the block.
GQ_FN void gq_finish_q2_k(const float* x, const gq_u8* sb, gq_u16 d_bits, gq_u16 dmin_bits, gq_u8* L,
                          gq_u8* out) {
    const float d_all = gq_fp16_to_fp32(d_bits);
    const float dmin_all = gq_fp16_to_fp32(dmin_bits);
    for (int j = 0; j < 16; ++j) {
        const float d = d_all * (float)(sb[j] & 0xF);
        if (d == 0.0f) continue;
        const float dm = dmin_all * (float)(sb[j] >> 4);
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        GQ_UNROLL
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (gq_u8)gq_requantize_level(xs[i], dm, d, 3);
    }
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) out[j] = sb[j];
    gq_pack_2bit(L, out + 16);
    gq_store_u16(out + 80, d_bits);
    gq_store_u16(out + 82, dmin_bits);
}

// quantize_row_q2_K_ref, one sub-block of 16 values: make_qkx2_quants with weights |x|,
// minimizing absolute error.
GQ_FN GqQkxFit gq_q2_k_sub_block(const float* xs) {
    float w[16];
    GQ_UNROLL
    for (int l = 0; l < 16; ++l) w[l] = fabsf(xs[l]);
    return gq_qkx3_search<16>(3, xs, w, -0.5f, 0.1f, 15, true);
}

// quantize_row_q2_K_ref's scale bytes (4-bit scale | 4-bit min << 4) and fp16 d and dmin: the 16
// scales and mins (-fit.min) rounded to 4 bits against their maxima.
GQ_FN void gq_q2_k_scales(const float* scales, const float* mins, gq_u8* sb, gq_u16* d_bits, gq_u16* dmin_bits) {
    float max_scale = 0.0f;
    float max_min = 0.0f;
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    *d_bits = 0;  // fp16 0.0
    *dmin_bits = 0;
    if (max_scale > 0.0f) {
        const float iscale = 15.0f / max_scale;
        GQ_UNROLL
        for (int j = 0; j < 16; ++j) sb[j] = (gq_u8)gq_nearest_int(iscale * scales[j]);
        *d_bits = gq_fp32_to_fp16(max_scale / 15.0f);
    } else {
        GQ_UNROLL
        for (int j = 0; j < 16; ++j) sb[j] = 0;
    }
    if (max_min > 0.0f) {
        const float iscale = 15.0f / max_min;
        GQ_UNROLL
        for (int j = 0; j < 16; ++j) sb[j] = (gq_u8)(sb[j] | ((gq_u32)gq_nearest_int(iscale * mins[j]) << 4));
        *dmin_bits = gq_fp32_to_fp16(max_min / 15.0f);
    }
}

// quantize_row_q2_K_impl, one sub-block: importance-weighted make_qkx3_quants; *sw gets the sum of
// its weights.
GQ_FN GqQkxFit gq_q2_k_sub_block_weighted(const float* xs, const float* qw, float sigma2, float* sw) {
    float w[16];
    *sw = gq_imatrix_weights<16>(xs, qw, sigma2, w);
    return gq_qkx3_search<16>(3, xs, w, -0.9f, 0.05f, 36, false);
}

// quantize_row_q2_K_impl's sigma2: the mean square of the super-block.
GQ_FN float gq_q2_k_sigma2(const float* x) { return gq_superblock_sum_x2(x) / 256.0f; }

// quantize_row_q2_K_impl's scale bytes: the scales and the mins each quantized to 4 bits by
// make_qp_quants, weighted by the sub-blocks' weight sums.
GQ_FN void gq_q2_k_scales_weighted(const float* scales, const float* mins, const float* sw, gq_u8* sb,
                                   gq_u16* d_bits, gq_u16* dmin_bits) {
    gq_u8 Ls[16];
    gq_u8 Lm[16];
    const float dm = gq_make_qp_quants<16>(15, scales, Ls, sw);
    const float mm = gq_make_qp_quants<16>(15, mins, Lm, sw);
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) sb[j] = (gq_u8)(Ls[j] | (Lm[j] << 4));
    *d_bits = gq_fp32_to_fp16(dm);
    *dmin_bits = gq_fp32_to_fp16(mm);
}

// quantize_row_q2_K_ref: per 16 values a scale and min, then both sets rounded to 4 bits.
GQ_FN void gq_quantize_superblock_q2_k(const float* x, gq_u8* out) {
    gq_u8 L[GQ_QK_K];
    float scales[16];
    float mins[16];
    for (int j = 0; j < 16; ++j) {
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        const GqQkxFit fit = gq_q2_k_sub_block(xs);
        scales[j] = fit.scale;
        mins[j] = -fit.min;
        gq_qkx_levels<16>(3, fit, xs, L + 16 * j);
    }
    gq_u8 sb[16];
    gq_u16 d_bits, dmin_bits;
    gq_q2_k_scales(scales, mins, sb, &d_bits, &dmin_bits);
    gq_finish_q2_k(x, sb, d_bits, dmin_bits, L, out);
}

// quantize_row_q2_K_impl: importance-weighted searches per 16 values, then the scales and the mins
// each quantized to 4 bits by make_qp_quants.
GQ_FN void gq_quantize_superblock_q2_k_weighted(const float* x, const float* qw, gq_u8* out) {
    const float sigma2 = gq_q2_k_sigma2(x);
    gq_u8 L[GQ_QK_K];
    float scales[16];
    float mins[16];
    float sw[16];
    for (int j = 0; j < 16; ++j) {
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        const GqQkxFit fit = gq_q2_k_sub_block_weighted(xs, qw + 16 * j, sigma2, &sw[j]);
        scales[j] = fit.scale;
        mins[j] = -fit.min;
        gq_qkx_levels<16>(3, fit, xs, L + 16 * j);
    }
    gq_u8 sb[16];
    gq_u16 d_bits, dmin_bits;
    gq_q2_k_scales_weighted(scales, mins, sw, sb, &d_bits, &dmin_bits);
    gq_finish_q2_k(x, sb, d_bits, dmin_bits, L, out);
}

// Weights 32*part .. 32*part + 31 of a Q2_K super-block (part 0..7).
GQ_FN void gq_dequantize_part_q2_k(const gq_u8* in, int part, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in + 80));
    const float dmin = gq_fp16_to_fp32(gq_load_u16(in + 82));
    const gq_u8* qs = in + 16 + 32 * (part / 4);
    const int shift = 2 * (part % 4);
    GQ_UNROLL
    for (int half = 0; half < 2; ++half) {
        const int sc = in[2 * part + half];
        const float dl = gq_mul(d, (float)(sc & 0xF));
        const float ml = gq_mul(dmin, (float)(sc >> 4));
        GQ_UNROLL
        for (int l = 0; l < 16; ++l) {
            y[16 * half + l] = gq_sub(gq_mul(dl, (float)((qs[16 * half + l] >> shift) & 3)), ml);
        }
    }
}

// ---------------------------------------------------------------- Q3_K

// The level (0..7) of x with a Q3_K sub-block's stored scale d (not 0).
GQ_FN int gq_q3_k_level(float x, float d) { return gq_clamp_i(gq_nearest_int(x / d), -4, 3) + 4; }

// The last steps of both Q3_K paths: requantize with the stored scales (levels -4..3), then
// split off the third bits into hmask (bit k of hmask[m] for level 32k + m) and write the block.
GQ_FN void gq_finish_q3_k(const float* x, const gq_u8* packed, gq_u16 d_bits, gq_i8* L, gq_u8* out) {
    const float d_all = gq_fp16_to_fp32(d_bits);
    for (int j = 0; j < 16; ++j) {
        const float d = d_all * (float)(gq_scale_q3(packed, j) - 32);
        if (d == 0.0f) continue;
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        GQ_UNROLL
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (gq_i8)gq_q3_k_level(xs[i], d);
    }
    // Every level is 0..7 here, so ggml's `if (L > 3) { set the hmask bit; L -= 4; }` is bit 2 to
    // hmask and the low two bits to qs.
    const gq_u8* levels = reinterpret_cast<const gq_u8*>(L);
    GQ_UNROLL
    for (int m = 0; m < 32; ++m) {
        int hmask = 0;
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) hmask |= ((levels[32 * k + m] >> 2) & 1) << k;
        out[m] = (gq_u8)hmask;
    }
    for (int h = 0; h < 2; ++h) {
        const gq_u8* Lh = levels + 128 * h;
        GQ_UNROLL
        for (int l = 0; l < 32; ++l) {
            out[32 + 32 * h + l] =
                (gq_u8)((Lh[l] & 3) | ((Lh[l + 32] & 3) << 2) | ((Lh[l + 64] & 3) << 4) | ((Lh[l + 96] & 3) << 6));
        }
    }
    GQ_UNROLL
    for (int k = 0; k < 12; ++k) out[96 + k] = packed[k];
    gq_store_u16(out + 108, d_bits);
}

// quantize_row_q3_K_ref's scales: the 16 signed sub-block scales (make_q3_quants per 16 values)
// rounded to 6 bits against the one of largest magnitude, packed, and the fp16 d.
GQ_FN void gq_q3_k_scales(const float* scales, gq_u8* packed, gq_u16* d_bits) {
    const float max_scale = gq_first_max_abs<16>(scales);
    *d_bits = 0;
    if (max_scale != 0.0f) {  // C's `if (max_scale)`: NaN counts as set
        const float iscale = -32.0f / max_scale;
        int v[16];
        GQ_UNROLL
        for (int j = 0; j < 16; ++j) {
            const int l = gq_wrap_i8(gq_nearest_int(iscale * scales[j]));  // int8_t l = nearest_int(...)
            v[j] = gq_clamp_i(l, -32, 31) + 32;
        }
        gq_pack_scales_q3(v, packed);
        *d_bits = gq_fp32_to_fp16(1.0f / iscale);
    } else {
        GQ_UNROLL
        for (int k = 0; k < 12; ++k) packed[k] = 0;
    }
}

// quantize_row_q3_K_impl's sigma2: twice the mean square of the super-block.
GQ_FN float gq_q3_k_sigma2(const float* x) { return 2.0f * gq_superblock_sum_x2(x) / 256.0f; }

// quantize_row_q3_K_impl, one sub-block of 16 values: importance-weighted make_qx_quants (levels
// + 4 to L); *sw gets the sum of its weights. Returns its scale.
GQ_FN float gq_q3_k_sub_block_weighted(const float* xs, const float* qw, float sigma2, gq_i8* L, float* sw) {
    float w[16];
    *sw = gq_imatrix_weights<16>(xs, qw, sigma2, w);
    return gq_make_qx_quants<16>(4, xs, L, 1, w);
}

// quantize_row_q3_K_impl's scales: the 16 scales quantized to 6 bits by make_qx_quants weighted
// by the sub-blocks' weight sums, packed, and the fp16 d.
GQ_FN void gq_q3_k_scales_weighted(const float* scales, const float* sw, gq_u8* packed, gq_u16* d_bits) {
    gq_i8 Ls[16];
    const float d_block = gq_make_qx_quants<16>(32, scales, Ls, 1, sw);
    int v[16];
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) v[j] = Ls[j];
    gq_pack_scales_q3(v, packed);
    *d_bits = gq_fp32_to_fp16(d_block);
}

// quantize_row_q3_K_ref: make_q3_quants per 16 values, then the scales.
GQ_FN void gq_quantize_superblock_q3_k(const float* x, gq_u8* out) {
    gq_i8 L[GQ_QK_K];
    float scales[16];
    for (int j = 0; j < 16; ++j) {
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        scales[j] = gq_make_q3_quants<16>(4, xs, L + 16 * j);
    }
    gq_u8 packed[12];
    gq_u16 d_bits;
    gq_q3_k_scales(scales, packed, &d_bits);
    gq_finish_q3_k(x, packed, d_bits, L, out);
}

// quantize_row_q3_K_impl: importance-weighted make_qx_quants per 16 values, then the scales.
GQ_FN void gq_quantize_superblock_q3_k_weighted(const float* x, const float* qw, gq_u8* out) {
    const float sigma2 = gq_q3_k_sigma2(x);
    gq_i8 L[GQ_QK_K];
    float scales[16];
    float sw[16];
    for (int j = 0; j < 16; ++j) {
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        scales[j] = gq_q3_k_sub_block_weighted(xs, qw + 16 * j, sigma2, L + 16 * j, &sw[j]);
    }
    gq_u8 packed[12];
    gq_u16 d_bits;
    gq_q3_k_scales_weighted(scales, sw, packed, &d_bits);
    gq_finish_q3_k(x, packed, d_bits, L, out);
}

// Weights 32*part .. 32*part + 31 of a Q3_K super-block (part 0..7).
GQ_FN void gq_dequantize_part_q3_k(const gq_u8* in, int part, float* y) {
    const float d_all = gq_fp16_to_fp32(gq_load_u16(in + 108));
    const gq_u8* qs = in + 32 + 32 * (part / 4);
    const int shift = 2 * (part % 4);
    GQ_UNROLL
    for (int half = 0; half < 2; ++half) {
        const float dl = gq_mul(d_all, (float)(gq_scale_q3(in + 96, 2 * part + half) - 32));
        GQ_UNROLL
        for (int l = 0; l < 16; ++l) {
            const int m = 16 * half + l;
            const int high = (in[m] >> part) & 1;  // hmask bit `part` belongs to weight 32*part + m
            y[m] = gq_mul(dl, (float)(((qs[m] >> shift) & 3) - (high ? 0 : 4)));
        }
    }
}

// ---------------------------------------------------------------- Q4_K and Q5_K

// The part Q4_K and Q5_K share after their scale searches: pack the 6-bit scales and mins,
// requantize each sub-block of 32 (levels 0..nmax) with the stored values.
template <int NMAX>
GQ_FN void gq_finish_k4(const float* x, const gq_u8* ls, const gq_u8* lm, gq_u16 d_bits, gq_u16 dmin_bits,
                        gq_u8* packed, gq_u8* L) {
    gq_pack_scales_k4(ls, lm, packed);
    const float d_all = gq_fp16_to_fp32(d_bits);
    const float dmin_all = gq_fp16_to_fp32(dmin_bits);
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        gq_scale_min_k4(j, packed, &sc, &m);
        const float d = d_all * (float)sc;
        if (d == 0.0f) continue;
        const float dm = dmin_all * (float)m;
        float xs[32];
        gq_load_floats<32>(x + 32 * j, xs);
        GQ_UNROLL
        for (int i = 0; i < 32; ++i) L[32 * j + i] = (gq_u8)gq_requantize_level(xs[i], dm, d, NMAX);
    }
}

// quantize_row_q4_K_ref / q5_K_ref, one sub-block of 32 values: make_qkx2_quants with weights
// av_x + |x| (av_x the sub-block's root mean square), Q4_K's trials from rmin -1 in 21 steps,
// Q5_K's from -0.5 in 16.
template <int NMAX>
GQ_FN GqQkxFit gq_k4_sub_block(const float* xs) {
    float sum_x2 = 0.0f;
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = sqrtf(sum_x2 / 32.0f);
    float w[32];
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(xs[l]);
    return NMAX == 15 ? gq_qkx3_search<32>(NMAX, xs, w, -1.0f, 0.1f, 20, false)
                      : gq_qkx3_search<32>(NMAX, xs, w, -0.5f, 0.1f, 15, false);
}

// quantize_row_q4_K_ref / q5_K_ref's scales: the 8 scales and mins (-fit.min) rounded to 6 bits
// against their maxima, and those maxima / 63 as fp16.
GQ_FN void gq_k4_scales(const float* scales, const float* mins, gq_u8* ls, gq_u8* lm, gq_u16* d_bits,
                        gq_u16* dmin_bits) {
    float max_scale = 0.0f;
    float max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    GQ_UNROLL
    for (int j = 0; j < 8; ++j) {
        ls[j] = (gq_u8)gq_min_i(63, (gq_u8)gq_nearest_int(inv_scale * scales[j]));
        lm[j] = (gq_u8)gq_min_i(63, (gq_u8)gq_nearest_int(inv_min * mins[j]));
    }
    *d_bits = gq_fp32_to_fp16(max_scale / 63.0f);
    *dmin_bits = gq_fp32_to_fp16(max_min / 63.0f);
}

// quantize_row_q4_K_impl / q5_K_impl, one sub-block: importance-weighted make_qkx3_quants; *sw gets
// the sum of its weights.
template <int NMAX>
GQ_FN GqQkxFit gq_k4_sub_block_weighted(const float* xs, const float* qw, float sigma2, float* sw) {
    float w[32];
    *sw = gq_imatrix_weights<32>(xs, qw, sigma2, w);
    return gq_qkx3_search<32>(NMAX, xs, w, -0.9f, 0.05f, 36, false);
}

// quantize_row_q4_K_impl / q5_K_impl's sigma2: twice the mean square of the super-block.
GQ_FN float gq_k4_sigma2(const float* x) { return 2.0f * gq_superblock_sum_x2(x) / 256.0f; }

// quantize_row_q4_K_impl / q5_K_impl's scales: scales and mins quantized to 6 bits by
// make_qp_quants, weighted by the sub-blocks' weight sums. Q5_K clamps those to 63; Q4_K stores
// them as they are (make_qp_quants can wrap a negative level).
GQ_FN void gq_k4_scales_weighted(const float* scales, const float* mins, const float* sw, bool clamp_to_63,
                                 gq_u8* ls, gq_u8* lm, gq_u16* d_bits, gq_u16* dmin_bits) {
    const float d_block = gq_make_qp_quants<8>(63, scales, ls, sw);
    const float m_block = gq_make_qp_quants<8>(63, mins, lm, sw);
    if (clamp_to_63) {
        GQ_UNROLL
        for (int j = 0; j < 8; ++j) {
            ls[j] = (gq_u8)gq_min_i(63, ls[j]);
            lm[j] = (gq_u8)gq_min_i(63, lm[j]);
        }
    }
    *d_bits = gq_fp32_to_fp16(d_block);
    *dmin_bits = gq_fp32_to_fp16(m_block);
}

// quantize_row_q4_K_ref / q5_K_ref for a super-block: leaves the header fields and the levels for
// the caller's packing.
template <int NMAX>
GQ_FN void gq_k4_plain(const float* x, gq_u16* d_bits, gq_u16* dmin_bits, gq_u8* packed, gq_u8* L) {
    float scales[8];
    float mins[8];
    for (int j = 0; j < 8; ++j) {
        float xs[32];
        gq_load_floats<32>(x + 32 * j, xs);
        const GqQkxFit fit = gq_k4_sub_block<NMAX>(xs);
        scales[j] = fit.scale;
        mins[j] = -fit.min;
        gq_qkx_levels<32>(NMAX, fit, xs, L + 32 * j);
    }
    gq_u8 ls[8];
    gq_u8 lm[8];
    gq_k4_scales(scales, mins, ls, lm, d_bits, dmin_bits);
    gq_finish_k4<NMAX>(x, ls, lm, *d_bits, *dmin_bits, packed, L);
}

// quantize_row_q4_K_impl / q5_K_impl for a super-block.
template <int NMAX>
GQ_FN void gq_k4_weighted(const float* x, const float* qw, bool clamp_to_63, gq_u16* d_bits, gq_u16* dmin_bits,
                          gq_u8* packed, gq_u8* L) {
    const float sigma2 = gq_k4_sigma2(x);
    float scales[8];
    float mins[8];
    float sw[8];
    for (int j = 0; j < 8; ++j) {
        float xs[32];
        gq_load_floats<32>(x + 32 * j, xs);
        const GqQkxFit fit = gq_k4_sub_block_weighted<NMAX>(xs, qw + 32 * j, sigma2, &sw[j]);
        scales[j] = fit.scale;
        mins[j] = -fit.min;
        gq_qkx_levels<32>(NMAX, fit, xs, L + 32 * j);
    }
    gq_u8 ls[8];
    gq_u8 lm[8];
    gq_k4_scales_weighted(scales, mins, sw, clamp_to_63, ls, lm, d_bits, dmin_bits);
    gq_finish_k4<NMAX>(x, ls, lm, *d_bits, *dmin_bits, packed, L);
}

GQ_FN void gq_write_header_k4(gq_u16 d_bits, gq_u16 dmin_bits, const gq_u8* packed, gq_u8* out) {
    gq_store_u16(out, d_bits);
    gq_store_u16(out + 2, dmin_bits);
    GQ_UNROLL
    for (int k = 0; k < 12; ++k) out[4 + k] = packed[k];
}

// L[64g + 32h + l] is nibble h of qs[32g + l].
GQ_FN void gq_pack_q4_k(const gq_u8* L, gq_u8* qs) {
    for (int g = 0; g < 4; ++g) {
        GQ_UNROLL
        for (int l = 0; l < 32; ++l) qs[32 * g + l] = (gq_u8)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
    }
}

// L[64g + 32h + l]: low 4 bits in nibble h of qs[32g + l], the 5th bit at bit 2g + h of qh[l].
GQ_FN void gq_pack_q5_k(const gq_u8* L, gq_u8* qh, gq_u8* qs) {
    int high[32];
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) high[l] = 0;
    for (int g = 0; g < 4; ++g) {
        GQ_UNROLL
        for (int l = 0; l < 32; ++l) {
            int l1 = L[64 * g + l];
            int l2 = L[64 * g + 32 + l];
            if (l1 > 15) {
                l1 -= 16;
                high[l] |= 1 << (2 * g);
            }
            if (l2 > 15) {
                l2 -= 16;
                high[l] |= 2 << (2 * g);
            }
            qs[32 * g + l] = (gq_u8)(l1 | (l2 << 4));
        }
    }
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) qh[l] = (gq_u8)high[l];
}

GQ_FN void gq_quantize_superblock_q4_k(const float* x, gq_u8* out) {
    gq_u8 L[GQ_QK_K];
    gq_u8 packed[12];
    gq_u16 d_bits, dmin_bits;
    gq_k4_plain<15>(x, &d_bits, &dmin_bits, packed, L);
    gq_write_header_k4(d_bits, dmin_bits, packed, out);
    gq_pack_q4_k(L, out + 16);
}

GQ_FN void gq_quantize_superblock_q4_k_weighted(const float* x, const float* qw, gq_u8* out) {
    gq_u8 L[GQ_QK_K];
    gq_u8 packed[12];
    gq_u16 d_bits, dmin_bits;
    gq_k4_weighted<15>(x, qw, false, &d_bits, &dmin_bits, packed, L);
    gq_write_header_k4(d_bits, dmin_bits, packed, out);
    gq_pack_q4_k(L, out + 16);
}

GQ_FN void gq_quantize_superblock_q5_k(const float* x, gq_u8* out) {
    gq_u8 L[GQ_QK_K];
    gq_u8 packed[12];
    gq_u16 d_bits, dmin_bits;
    gq_k4_plain<31>(x, &d_bits, &dmin_bits, packed, L);
    gq_write_header_k4(d_bits, dmin_bits, packed, out);
    gq_pack_q5_k(L, out + 16, out + 48);
}

GQ_FN void gq_quantize_superblock_q5_k_weighted(const float* x, const float* qw, gq_u8* out) {
    gq_u8 L[GQ_QK_K];
    gq_u8 packed[12];
    gq_u16 d_bits, dmin_bits;
    gq_k4_weighted<31>(x, qw, true, &d_bits, &dmin_bits, packed, L);
    gq_write_header_k4(d_bits, dmin_bits, packed, out);
    gq_pack_q5_k(L, out + 16, out + 48);
}

// Weights 32*part .. 32*part + 31 of a Q4_K super-block (part 0..7).
GQ_FN void gq_dequantize_part_q4_k(const gq_u8* in, int part, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const float dmin = gq_fp16_to_fp32(gq_load_u16(in + 2));
    int sc, m;
    gq_scale_min_k4(part, in + 4, &sc, &m);
    const float d1 = gq_mul(d, (float)sc);
    const float m1 = gq_mul(dmin, (float)m);
    const gq_u8* qs = in + 16 + 32 * (part / 2);
    const int shift = 4 * (part % 2);
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) y[l] = gq_sub(gq_mul(d1, (float)((qs[l] >> shift) & 0xF)), m1);
}

// Weights 32*part .. 32*part + 31 of a Q5_K super-block (part 0..7).
GQ_FN void gq_dequantize_part_q5_k(const gq_u8* in, int part, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    const float dmin = gq_fp16_to_fp32(gq_load_u16(in + 2));
    int sc, m;
    gq_scale_min_k4(part, in + 4, &sc, &m);
    const float d1 = gq_mul(d, (float)sc);
    const float m1 = gq_mul(dmin, (float)m);
    const gq_u8* qh = in + 16;
    const gq_u8* qs = in + 48 + 32 * (part / 2);
    const int shift = 4 * (part % 2);
    GQ_UNROLL
    for (int l = 0; l < 32; ++l) {
        const int q = ((qs[l] >> shift) & 0xF) + (((qh[l] >> part) & 1) ? 16 : 0);
        y[l] = gq_sub(gq_mul(d1, (float)q), m1);
    }
}

// ---------------------------------------------------------------- Q6_K

// quantize_row_q6_K_ref and _impl, one sub-block of 16 values: make_qx_quants (levels + 32 to L)
// with weights x^2, or with an importance matrix its raw values qw (ggml's _impl uses no sigma2
// here). Returns its scale.
GQ_FN float gq_q6_k_sub_block(const float* xs, const float* qw, gq_i8* L) {
    return gq_make_qx_quants<16>(32, xs, L, 1, qw);
}

// Q6_K's int8 scales against the scale of largest magnitude, and the fp16 d. False when all 16 are
// below GROUP_MAX_EPS: then the super-block is zeros.
GQ_FN bool gq_q6_k_scales(const float* scales, gq_i8* sc, gq_u16* d_bits) {
    float max_scale = 0.0f;
    float max_abs_scale = 0.0f;
    for (int j = 0; j < 16; ++j) {
        const float a = fabsf(scales[j]);
        if (a > max_abs_scale) {
            max_abs_scale = a;
            max_scale = scales[j];
        }
    }
    if (max_abs_scale < GQ_GROUP_MAX_EPS) return false;
    const float iscale = -128.0f / max_scale;
    *d_bits = gq_fp32_to_fp16(1.0f / iscale);
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) sc[j] = (gq_i8)gq_wrap_i8(gq_min_i(127, gq_nearest_int(iscale * scales[j])));
    return true;
}

// The level (0..63) of x with a Q6_K sub-block's stored scale d (not 0).
GQ_FN int gq_q6_k_level(float x, float d) { return gq_clamp_i(gq_nearest_int(x / d), -32, 31) + 32; }

// quantize_row_q6_K_ref and _impl: the sub-blocks' searches, the int8 scales, then every sub-block
// whose stored scale is not 0 requantized with it.
template <bool kWeighted>
GQ_FN void gq_quantize_superblock_q6_k_any(const float* x, const float* qw, gq_u8* out) {
    gq_i8 L[GQ_QK_K];
    float scales[16];
    for (int j = 0; j < 16; ++j) {
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        if (kWeighted) {
            float qws[16];
            gq_load_floats<16>(qw + 16 * j, qws);
            scales[j] = gq_q6_k_sub_block(xs, qws, L + 16 * j);
        } else {
            scales[j] = gq_q6_k_sub_block(xs, nullptr, L + 16 * j);
        }
    }
    gq_i8 sc[16];
    gq_u16 d_bits;
    if (!gq_q6_k_scales(scales, sc, &d_bits)) {
        for (int k = 0; k < GQ_Q6_K_BYTES; ++k) out[k] = 0;
        return;
    }
    const float d_all = gq_fp16_to_fp32(d_bits);
    for (int j = 0; j < 16; ++j) {
        const float d = d_all * (float)sc[j];
        if (d == 0.0f) continue;
        float xs[16];
        gq_load_floats<16>(x + 16 * j, xs);
        GQ_UNROLL
        for (int i = 0; i < 16; ++i) L[16 * j + i] = (gq_i8)gq_q6_k_level(xs[i], d);
    }
    // Per half h, L[128h + 32k + l]: low nibble in ql[64h + 32(k%2) + l] (bits 4(k/2)), top two
    // bits in qh[32h + l] (bits 2k).
    for (int h = 0; h < 2; ++h) {
        const gq_i8* Lh = L + 128 * h;
        GQ_UNROLL
        for (int l = 0; l < 32; ++l) {
            const int q1 = Lh[l];
            const int q2 = Lh[l + 32];
            const int q3 = Lh[l + 64];
            const int q4 = Lh[l + 96];
            out[64 * h + l] = (gq_u8)((q1 & 0xF) | ((q3 & 0xF) << 4));
            out[64 * h + 32 + l] = (gq_u8)((q2 & 0xF) | ((q4 & 0xF) << 4));
            out[128 + 32 * h + l] = (gq_u8)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
    GQ_UNROLL
    for (int j = 0; j < 16; ++j) out[192 + j] = (gq_u8)sc[j];
    gq_store_u16(out + 208, d_bits);
}

GQ_FN void gq_quantize_superblock_q6_k(const float* x, gq_u8* out) {
    gq_quantize_superblock_q6_k_any<false>(x, nullptr, out);
}

GQ_FN void gq_quantize_superblock_q6_k_weighted(const float* x, const float* qw, gq_u8* out) {
    gq_quantize_superblock_q6_k_any<true>(x, qw, out);
}

// Weights 32*part .. 32*part + 31 of a Q6_K super-block (part 0..7).
GQ_FN void gq_dequantize_part_q6_k(const gq_u8* in, int part, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in + 208));
    const int h = part / 4;
    const int k = part % 4;
    const gq_u8* ql = in + 64 * h + 32 * (k % 2);
    const gq_u8* qh = in + 128 + 32 * h;
    const int low_shift = 4 * (k / 2);
    GQ_UNROLL
    for (int half = 0; half < 2; ++half) {
        const float dl = gq_mul(d, (float)(gq_i8)in[192 + 2 * part + half]);  // C: d * sc * q is (d*sc)*q
        GQ_UNROLL
        for (int l = 0; l < 16; ++l) {
            const int m = 16 * half + l;
            const int q = (((ql[m] >> low_shift) & 0xF) | (((qh[m] >> (2 * k)) & 3) << 4)) - 32;
            y[m] = gq_mul(dl, (float)q);
        }
    }
}
