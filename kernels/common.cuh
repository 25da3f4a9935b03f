// Shared building blocks for gpuquant's kernels, written once for three compilers: NVRTC (the CuPy
// backend), nvcc (compile checks) and a plain C++ compiler (the host build, kernels/host_*.cpp: the
// `native` backend, and how CI without a GPU tests the kernels' arithmetic against ggml's golden
// bytes; the CUDA simulator also builds the .cu files with it). Everything here is float32
// arithmetic in ggml's order; the device build must use --fmad=false and -ftz=false, the host build
// -ffp-contract=off, so that no a*b+c is fused and subnormals survive, exactly as in ggml's portable
// C build.
#pragma once

#if defined(__CUDACC__)
#define GQ_FN __device__ __forceinline__
#define GQ_UNROLL _Pragma("unroll")
#else
#include <math.h>
#include <string.h>
#define GQ_FN static inline
#define GQ_UNROLL
#endif

// NVRTC has no <stdint.h>; these widths hold on every platform we build for (LP64 and CUDA).
typedef unsigned char gq_u8;
typedef signed char gq_i8;
typedef unsigned short gq_u16;
typedef unsigned int gq_u32;
typedef int gq_i32;
typedef long long gq_i64;

// ---------------------------------------------------------------- float bits

GQ_FN gq_u32 gq_f32_bits(float f) {
#if defined(__CUDACC__)
    return __float_as_uint(f);
#else
    gq_u32 u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

GQ_FN float gq_f32_from_bits(gq_u32 u) {
#if defined(__CUDACC__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

// The float family's conversions (F16, BF16) live here, not in a floats.cuh: every block family
// stores fp16 scales with them. floats.cu and host_floats.cpp loop them elementwise.
//
// float32 -> IEEE half bits, round to nearest even, overflow to inf; NaN becomes a quiet NaN with
// its sign kept and no payload (0x7E00), as ggml's GGML_FP32_TO_FP16 does. Pure integer code, so
// host and device agree bit for bit whatever the float environment.
GQ_FN gq_u16 gq_fp32_to_fp16(float f) {
    const gq_u32 u = gq_f32_bits(f);
    const gq_u32 sign = (u >> 16) & 0x8000u;
    const gq_u32 mag = u & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) return (gq_u16)(sign | 0x7E00u);   // NaN
    if (mag >= 0x477FF000u) return (gq_u16)(sign | 0x7C00u);  // rounds past 65504: inf
    if (mag >= 0x38800000u) {                                 // normal half (|f| >= 2^-14)
        // Rebias the exponent (127 -> 15), then round the 13 dropped mantissa bits to even;
        // a carry out of the mantissa correctly bumps the exponent.
        const gq_u32 rebiased = mag - 0x38000000u;
        const gq_u32 rounded = rebiased + 0x0FFFu + ((rebiased >> 13) & 1u);
        return (gq_u16)(sign | (rounded >> 13));
    }
    if (mag < 0x33000000u) return (gq_u16)sign;  // below half the smallest subnormal: signed zero
    // Subnormal half: the value in units of 2^-24, from the full 24-bit significand, rounded to even.
    const gq_u32 exponent = mag >> 23;                        // 102..112
    const gq_u32 significand = (mag & 0x007FFFFFu) | 0x00800000u;
    const gq_u32 shift = 126u - exponent;                     // 14..24
    const gq_u32 kept = significand >> shift;
    const gq_u32 rest = significand & ((1u << shift) - 1u);
    const gq_u32 half = 1u << (shift - 1u);
    const gq_u32 round_up = (rest > half || (rest == half && (kept & 1u))) ? 1u : 0u;
    return (gq_u16)(sign | (kept + round_up));
}

// IEEE half bits -> float32 (exact), except that a NaN comes out quiet (bit 22 set, payload and sign
// kept), as ggml's GGML_FP16_TO_FP32 makes it by passing the value through a multiply.
GQ_FN float gq_fp16_to_fp32(gq_u16 h) {
    const gq_u32 sign = ((gq_u32)h & 0x8000u) << 16;
    const gq_u32 exponent = ((gq_u32)h >> 10) & 0x1Fu;
    gq_u32 mantissa = (gq_u32)h & 0x03FFu;
    if (exponent == 0x1Fu) {
        const gq_u32 quiet = mantissa != 0 ? 0x00400000u : 0u;
        return gq_f32_from_bits(sign | 0x7F800000u | quiet | (mantissa << 13));
    }
    if (exponent != 0) return gq_f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0) return gq_f32_from_bits(sign);
    // Subnormal half: normalize into a float32 exponent.
    gq_u32 e = 113u;
    while ((mantissa & 0x0400u) == 0) {
        mantissa <<= 1;
        e -= 1u;
    }
    return gq_f32_from_bits(sign | (e << 23) | ((mantissa & 0x03FFu) << 13));
}

// float32 -> bfloat16 bits as ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet.
GQ_FN gq_u16 gq_fp32_to_bf16(float f) {
    const gq_u32 u = gq_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (gq_u16)((u >> 16) | 64u);
    return (gq_u16)((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

GQ_FN float gq_bf16_to_fp32(gq_u16 h) { return gq_f32_from_bits((gq_u32)h << 16); }

// ---------------------------------------------------------------- NaN bits as x86 makes them
// ggml's reference is x86 code. There an invalid operation (0 * inf, inf - inf, 0 / 0) makes the
// "default NaN" 0xFFC00000 and an operation on a NaN returns that NaN, quieted (the first operand's
// when both are NaN); a GPU returns its canonical NaN 0x7FFFFFFF in every case. Where a NaN's bits
// reach the output (dequantized values, gq_nearest_int), the device code asks for x86's NaN; the
// host build is x86 code already. NaNs arise from finite input: a block whose fp16 scale overflows
// to inf dequantizes its zero levels as inf * 0, and a block of subnormals gets an infinite
// inverse scale that multiplies a zero.

// The NaN that x86 makes for an operation on a and b whose result is NaN.
GQ_FN float gq_x86_nan(float a, float b) {
    if (a != a) return gq_f32_from_bits(gq_f32_bits(a) | 0x00400000u);
    if (b != b) return gq_f32_from_bits(gq_f32_bits(b) | 0x00400000u);
    return gq_f32_from_bits(0xFFC00000u);
}

// a * b, a + b and a - b with x86's NaN results (for the values that dequantization writes).
GQ_FN float gq_mul(float a, float b) {
    const float r = a * b;
#if defined(__CUDACC__)
    if (r != r) return gq_x86_nan(a, b);
#endif
    return r;
}

GQ_FN float gq_add(float a, float b) {
    const float r = a + b;
#if defined(__CUDACC__)
    if (r != r) return gq_x86_nan(a, b);
#endif
    return r;
}

GQ_FN float gq_sub(float a, float b) {
    const float r = a - b;
#if defined(__CUDACC__)
    if (r != r) return gq_x86_nan(a, b);
#endif
    return r;
}

// -f as x86 computes it (a sign flip, NaN included: the device's negation may canonicalize a NaN).
GQ_FN float gq_neg(float f) { return gq_f32_from_bits(gq_f32_bits(f) ^ 0x80000000u); }

// ---------------------------------------------------------------- rounding and casts

// ggml's nearest_int: adding 1.5*2^23 rounds to an integer (half to even) in the low mantissa bits.
// Using the same trick (rather than rint) keeps ggml's results even outside its asserted range.
// A NaN argument (an infinite inverse scale times a zero, in a block of subnormals) is x86's default
// NaN there, whose low mantissa bits give 0; the device's NaN would give 0x3FFFFF.
GQ_FN int gq_nearest_int(float f) {
#if defined(__CUDACC__)
    if (f != f) return 0;
#endif
    const float shifted = f + 12582912.0f;
    return (int)(gq_f32_bits(shifted) & 0x007FFFFFu) - 0x00400000;
}

// A C cast float -> int as x86-64 compiles it (cvttss2si): truncation toward zero, and INT_MIN for
// NaN or anything out of range (the device's own conversion would saturate instead).
// Written as selects, not branches, so that a compiler can vectorize the loops that use it.
GQ_FN int gq_trunc_to_int(float f) {
    const bool in_range = f > -2147483648.0f && f < 2147483648.0f;
    const int v = (int)(in_range ? f : 0.0f);
    return in_range ? v : (int)0x80000000u;
}

// (int8_t)f and (uint8_t)f as ggml's C code writes them: convert to int, keep the low byte.
GQ_FN int gq_cast_i8(float f) { return (int)(gq_i8)(gq_u8)(gq_u32)gq_trunc_to_int(f); }
GQ_FN int gq_cast_u8(float f) { return (int)(gq_u8)(gq_u32)gq_trunc_to_int(f); }

// C's roundf (half away from zero), spelled out so that host and device share one exact definition:
// f - truncf(f) is exact, so no f + 0.5 double rounding (0.49999997f stays 0).
// The step is a select of 0 or 1 (not a branch: random weights would mispredict half the time);
// adding a signed zero leaves t as it is, -0 included; NaN stays NaN and Inf stays Inf.
GQ_FN float gq_roundf(float f) {
    const float t = truncf(f);
    const float step = fabsf(f - t) >= 0.5f ? 1.0f : 0.0f;
    return t + copysignf(step, f);
}

// C's MIN/MAX macros: a < b ? a : b and a > b ? a : b (the comparison order decides ties and NaN).
GQ_FN int gq_min_i(int a, int b) { return a < b ? a : b; }
GQ_FN int gq_max_i(int a, int b) { return a > b ? a : b; }
GQ_FN float gq_max_f(float a, float b) { return a > b ? a : b; }

// ---------------------------------------------------------------- byte packing

GQ_FN void gq_store_u16(gq_u8* dst, gq_u16 v) {
    dst[0] = (gq_u8)(v & 0xFFu);
    dst[1] = (gq_u8)(v >> 8);
}

GQ_FN gq_u16 gq_load_u16(const gq_u8* src) { return (gq_u16)(src[0] | (src[1] << 8)); }

GQ_FN void gq_store_u32(gq_u8* dst, gq_u32 v) {
    dst[0] = (gq_u8)(v & 0xFFu);
    dst[1] = (gq_u8)((v >> 8) & 0xFFu);
    dst[2] = (gq_u8)((v >> 16) & 0xFFu);
    dst[3] = (gq_u8)(v >> 24);
}

GQ_FN gq_u32 gq_load_u32(const gq_u8* src) {
    return (gq_u32)src[0] | ((gq_u32)src[1] << 8) | ((gq_u32)src[2] << 16) | ((gq_u32)src[3] << 24);
}

// ---------------------------------------------------------------- loads and stores of a block

// N consecutive floats (N a multiple of 4) into registers: on the device, 16-byte vector loads when
// src is 16-byte aligned (every block of a tensor is when the tensor's start is, as blocks are
// multiples of 16 bytes), scalar loads otherwise (a tensor view may start anywhere).
template <int N>
GQ_FN void gq_load_floats(const float* __restrict__ src, float* dst) {
#if defined(__CUDACC__)
    if ((reinterpret_cast<unsigned long long>(src) & 15ull) == 0) {
        const float4* v = reinterpret_cast<const float4*>(src);
        GQ_UNROLL
        for (int k = 0; k < N / 4; ++k) {
            const float4 f = v[k];
            dst[4 * k + 0] = f.x;
            dst[4 * k + 1] = f.y;
            dst[4 * k + 2] = f.z;
            dst[4 * k + 3] = f.w;
        }
        return;
    }
#endif
    GQ_UNROLL
    for (int k = 0; k < N; ++k) dst[k] = src[k];
}

// The reverse of gq_load_floats: N floats from registers to dst, as vectors when dst is aligned.
template <int N>
GQ_FN void gq_store_floats(float* __restrict__ dst, const float* src) {
#if defined(__CUDACC__)
    if ((reinterpret_cast<unsigned long long>(dst) & 15ull) == 0) {
        float4* v = reinterpret_cast<float4*>(dst);
        GQ_UNROLL
        for (int k = 0; k < N / 4; ++k) v[k] = make_float4(src[4 * k], src[4 * k + 1], src[4 * k + 2], src[4 * k + 3]);
        return;
    }
#endif
    GQ_UNROLL
    for (int k = 0; k < N; ++k) dst[k] = src[k];
}

template <int N>
GQ_FN void gq_copy_bytes(gq_u8* __restrict__ dst, const gq_u8* src) {
    GQ_UNROLL
    for (int k = 0; k < N; ++k) dst[k] = src[k];
}

#if defined(__CUDACC__)
// ---------------------------------------------------------------- kernel bodies: one thread per block

// The global index of the calling thread in a one-dimensional launch.
__device__ __forceinline__ gq_i64 gq_thread_index() {
    return (gq_i64)blockIdx.x * (gq_i64)blockDim.x + (gq_i64)threadIdx.x;
}

// Thread b converts block b of a tensor (Block weights, Bytes bytes; blocks never straddle rows, so
// block b of the tensor is at x + Block * b and out + Bytes * b) with a .cuh file's block function.
// Blocks that fit in registers are loaded, converted and stored there:
template <int Block, int Bytes, void (*Quantize)(const float*, gq_u8*)>
__device__ __forceinline__ void gq_quantize_in_registers(const float* __restrict__ x, gq_u8* __restrict__ out,
                                                         gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    float xb[Block];
    gq_load_floats<Block>(x + b * Block, xb);
    gq_u8 qb[Bytes];
    Quantize(xb, qb);
    gq_copy_bytes<Bytes>(out + b * Bytes, qb);
}

template <int Block, int Bytes, void (*Dequantize)(const gq_u8*, float*)>
__device__ __forceinline__ void gq_dequantize_in_registers(const gq_u8* __restrict__ q, float* __restrict__ y,
                                                           gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b >= n_blocks) return;
    float yb[Block];
    Dequantize(q + b * Bytes, yb);
    gq_store_floats<Block>(y + b * Block, yb);
}

// and larger blocks straight in global memory:
template <int Block, int Bytes, void (*Quantize)(const float*, gq_u8*)>
__device__ __forceinline__ void gq_quantize_in_memory(const float* __restrict__ x, gq_u8* __restrict__ out,
                                                      gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b < n_blocks) Quantize(x + b * Block, out + b * Bytes);
}

template <int Block, int Bytes, void (*Dequantize)(const gq_u8*, float*)>
__device__ __forceinline__ void gq_dequantize_in_memory(const gq_u8* q, float* y, gq_i64 n_blocks) {
    const gq_i64 b = gq_thread_index();
    if (b < n_blocks) Dequantize(q + b * Bytes, y + b * Block);
}
#endif

// ---------------------------------------------------------------- scale searches

#define GQ_GROUP_MAX_EPS 1e-15f

// The weight a search gives element i when no importance weights are passed (ggml's rmse_type).
GQ_FN float gq_rmse_weight(int rmse_type, float x) {
    if (rmse_type == 1) return x * x;
    if (rmse_type == 2) return 1.0f;
    if (rmse_type == 3) return fabsf(x);
    return sqrtf(fabsf(x));
}

// The first of N values of largest magnitude, as ggml's symmetric searches find it: from 0,
// `if (fabsf(v) > amax)` takes v, so ties keep the first and a NaN is never taken. Its magnitude goes
// to *amax when amax is not null.
template <int N>
GQ_FN float gq_first_max_abs(const float* x, float* amax = nullptr) {
    float max = 0.0f;
    float largest = 0.0f;
    if (N >= 32 && N % 8 == 0) {
        // The largest magnitude in 8 lanes side by side (order does not change a maximum, and each
        // lane skips NaN as ggml's chain does), then the first value of that magnitude: the value
        // ggml's chain of N dependent compares ends on.
        float lane[8];
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) lane[k] = 0.0f;
        GQ_UNROLL
        for (int i = 0; i < N; i += 8) {
            GQ_UNROLL
            for (int k = 0; k < 8; ++k) {
                const float ax = fabsf(x[i + k]);
                lane[k] = ax > lane[k] ? ax : lane[k];
            }
        }
        GQ_UNROLL
        for (int k = 0; k < 8; ++k) largest = lane[k] > largest ? lane[k] : largest;
        if (largest > 0.0f) {
            for (int i = 0; i < N; ++i) {
                if (fabsf(x[i]) == largest) {
                    max = x[i];
                    break;
                }
            }
        }
    } else {  // short groups (Q3_K's and Q6_K's 16 values, the sub-block scales): the chain was faster
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float ax = fabsf(x[i]);
            if (ax > largest) {
                largest = ax;
                max = x[i];
            }
        }
    }
    if (amax) *amax = largest;
    return max;
}

// make_qx_quants' 18 trials are accumulated this many at a time (a divisor of 18): on the host all
// of them side by side; on the GPU, where each thread holds one sub-block, 3 keep the sums in few
// registers.
#ifdef __CUDACC__
#define GQ_QX_BATCH 3
#else
#define GQ_QX_BATCH 18
#endif

// ggml's make_qx_quants: a symmetric scale for N values on the levels -nmax..nmax-1, stored in L
// as level + nmax. rmse_type 0 takes the plain max-based scale; otherwise a weighted least-squares
// scale is fitted and 18 nearby inverse scales are tried (a negative rmse_type stops after the
// first fit). qw (may be null) overrides the per-element weights. Returns the scale.
template <int N>
GQ_FN float gq_make_qx_quants(int nmax, const float* x, gq_i8* L, int rmse_type, const float* qw) {
    float amax;
    const float max = gq_first_max_abs<N>(x, &amax);
    if (amax < GQ_GROUP_MAX_EPS) {
        GQ_UNROLL
        for (int i = 0; i < N; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = (float)(-nmax) / max;
    if (rmse_type == 0) {
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const int l = gq_nearest_int(iscale * x[i]);
            L[i] = (gq_i8)(nmax + gq_max_i(-nmax, gq_min_i(nmax - 1, l)));
        }
        return 1.0f / iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0.0f;
    float suml2 = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) {
        const int l = gq_max_i(-nmax, gq_min_i(nmax - 1, gq_nearest_int(iscale * x[i])));
        L[i] = (gq_i8)(l + nmax);
        const float w = qw ? qw[i] : gq_rmse_weight(rmse_type, x[i]);
        const float fl = (float)l;
        sumlx += w * x[i] * fl;
        suml2 += w * fl * fl;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0.0f ? 0.5f * (scale + 1.0f / iscale) : 1.0f / iscale;
    float best = scale * sumlx;
    // The 18 trial scales is = -9..9 (not 0), as ggml tries them one after another. Their sums are
    // independent, so they are accumulated GQ_QX_BATCH side by side (each in ggml's order: the same
    // bits), which turns one long chain of dependent additions into several that a CPU overlaps or
    // vectorizes; then the batch's trials are judged in ggml's order.
    bool won = false;
    float won_iscale = iscale;
    for (int k0 = 0; k0 < 18; k0 += GQ_QX_BATCH) {
        float trial_iscale[GQ_QX_BATCH], trial_sumlx[GQ_QX_BATCH], trial_suml2[GQ_QX_BATCH];
        GQ_UNROLL
        for (int k = 0; k < GQ_QX_BATCH; ++k) {
            const int is = k0 + k < 9 ? k0 + k - 9 : k0 + k - 8;
            trial_iscale[k] = -((float)nmax + 0.1f * (float)is) / max;
            trial_sumlx[k] = 0.0f;
            trial_suml2[k] = 0.0f;
        }
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float w = qw ? qw[i] : gq_rmse_weight(rmse_type, x[i]);
            const float wx = w * x[i];
            GQ_UNROLL
            for (int k = 0; k < GQ_QX_BATCH; ++k) {
                const int l = gq_max_i(-nmax, gq_min_i(nmax - 1, gq_nearest_int(trial_iscale[k] * x[i])));
                const float fl = (float)l;
                trial_sumlx[k] += wx * fl;
                trial_suml2[k] += w * fl * fl;
            }
        }
        GQ_UNROLL
        for (int k = 0; k < GQ_QX_BATCH; ++k) {
            if (trial_suml2[k] > 0.0f && trial_sumlx[k] * trial_sumlx[k] > best * trial_suml2[k]) {
                scale = trial_sumlx[k] / trial_suml2[k];
                best = scale * trial_sumlx[k];
                won_iscale = trial_iscale[k];
                won = true;
            }
        }
    }
    if (won) {  // L of the last trial that won, as ggml's loop leaves it
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const int l = gq_nearest_int(won_iscale * x[i]);
            L[i] = (gq_i8)(nmax + gq_max_i(-nmax, gq_min_i(nmax - 1, l)));
        }
    }
    return scale;
}

// Trials of make_qkx3_quants run side by side (see there). On the host 24 (three AVX2 registers
// per sum) measured 1.6-1.8x faster than 8 for Q4_K, Q2_K and Q4_1 with an imatrix (32 and 40 were
// slower again). On the GPU one at a time: each thread holds one sub-block (its values and weights
// in registers, no batch arrays beside them), and every thread of a warp runs the same nstep + 1
// trials in step, whatever wins where.
#ifdef __CUDACC__
#define GQ_QKX_BATCH 1
#else
#define GQ_QKX_BATCH 24
#endif

// What make_qkx3_quants' search ends on: the fit x ~ scale * L + min, and what its levels are
// computed from. Every candidate's levels are L[i] = clamp(nearest_int(level_iscale * (x[i] -
// level_min)), 0, nmax) for its inverse scale and the min it was tried with, so the search keeps
// those two numbers of the best candidate and the levels are computed once, after it (zero: all 0).
struct GqQkxFit {
    float scale;
    float min;  // <= 0; ggml's *the_min is -min
    float level_iscale;
    float level_min;
    bool zero;
};

GQ_FN int gq_qkx_level(int nmax, float iscale, float xi, float min) {
    return gq_max_i(0, gq_min_i(nmax, gq_nearest_int(iscale * (xi - min))));
}

// The level of x[i] in the fit's search (0..nmax).
GQ_FN int gq_qkx_fit_level(int nmax, const GqQkxFit& fit, float xi) {
    return fit.zero ? 0 : gq_qkx_level(nmax, fit.level_iscale, xi, fit.level_min);
}

// ggml's make_qkx3_quants' search: an asymmetric fit x ~ scale*L + min (min <= 0) on levels
// 0..nmax. Starts from the min/max grid, then tries nstep+1 inverse scales (rmin + rdelta*is +
// nmax)/range, each with a least-squares scale and min, keeping the one with the smallest weighted
// error (squared, or absolute when use_mad). weights may be null (then x*x).
template <int N>
GQ_FN GqQkxFit gq_qkx3_search(int nmax, const float* x, const float* weights, float rmin, float rdelta, int nstep,
                              bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights ? weights[0] : x[0] * x[0];
    float sum_x = sum_w * x[0];
    GQ_UNROLL
    for (int i = 1; i < N; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights ? weights[i] : x[i] * x[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    GqQkxFit fit;
    if (max <= min) {
        fit.scale = 0.0f;
        fit.min = min;
        fit.level_iscale = 0.0f;
        fit.level_min = min;
        fit.zero = true;
        return fit;
    }
    fit.zero = false;
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    float best_error = 0.0f;
    GQ_UNROLL
    for (int i = 0; i < N; ++i) {
        const int l = gq_qkx_level(nmax, iscale, x[i], min);
        float diff = scale * (float)l + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        const float w = weights ? weights[i] : x[i] * x[i];
        best_error += w * diff;
    }
    fit.level_iscale = iscale;
    fit.level_min = min;
    if (nstep < 1) {
        fit.scale = scale;
        fit.min = min;
        return fit;
    }
    // ggml tries is = 0..nstep one after another, and a trial that wins changes min, which the
    // trials after it use. So trials are run GQ_QKX_BATCH at a time with the min of the batch's
    // start, each trial's sums in ggml's order (the same bits; side by side they overlap or
    // vectorize instead of waiting on one chain of additions), then judged in ggml's order; at a
    // win the trials after it are dropped and the next batch starts after the winner. (A batch of
    // one, the GPU's, is ggml's loop as it stands.)
    int is = 0;
    while (is <= nstep) {
        const float batch_min = min;
        float t_iscale[GQ_QKX_BATCH], t_l[GQ_QKX_BATCH], t_l2[GQ_QKX_BATCH], t_xl[GQ_QKX_BATCH];
        GQ_UNROLL
        for (int k = 0; k < GQ_QKX_BATCH; ++k) {
            t_iscale[k] = (rmin + rdelta * (float)(is + k) + (float)nmax) / (max - batch_min);
            t_l[k] = 0.0f;
            t_l2[k] = 0.0f;
            t_xl[k] = 0.0f;
        }
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float w = weights ? weights[i] : x[i] * x[i];
            GQ_UNROLL
            for (int k = 0; k < GQ_QKX_BATCH; ++k) {
                const float fl = (float)gq_qkx_level(nmax, t_iscale[k], x[i], batch_min);
                const float wl = w * fl;
                t_l[k] += wl;
                t_l2[k] += wl * fl;
                t_xl[k] += wl * x[i];
            }
        }
        float t_D[GQ_QKX_BATCH], t_scale[GQ_QKX_BATCH], t_min[GQ_QKX_BATCH], t_error[GQ_QKX_BATCH];
        GQ_UNROLL
        for (int k = 0; k < GQ_QKX_BATCH; ++k) {
            const float D = sum_w * t_l2[k] - t_l[k] * t_l[k];
            t_D[k] = D;
            float this_scale = (sum_w * t_xl[k] - sum_x * t_l[k]) / D;
            float this_min = (t_l2[k] * sum_x - t_l[k] * t_xl[k]) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = t_xl[k] / t_l2[k];
            }
            t_scale[k] = this_scale;
            t_min[k] = this_min;
            t_error[k] = 0.0f;
        }
        GQ_UNROLL
        for (int i = 0; i < N; ++i) {
            const float w = weights ? weights[i] : x[i] * x[i];
            GQ_UNROLL
            for (int k = 0; k < GQ_QKX_BATCH; ++k) {
                const int l = gq_qkx_level(nmax, t_iscale[k], x[i], batch_min);
                float diff = t_scale[k] * (float)l + t_min[k] - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                t_error[k] += w * diff;
            }
        }
        int next = gq_min_i(nstep + 1, is + GQ_QKX_BATCH);
        GQ_UNROLL
        for (int k = 0; k < GQ_QKX_BATCH; ++k) {
            if (is + k <= nstep && t_D[k] > 0.0f && t_error[k] < best_error) {
                best_error = t_error[k];
                scale = t_scale[k];
                min = t_min[k];
                fit.level_iscale = t_iscale[k];
                fit.level_min = batch_min;
                next = is + k + 1;
                break;
            }
        }
        is = next;
    }
    fit.scale = scale;
    fit.min = min;
    return fit;
}

// The N levels of a search's fit (gq_qkx3_search), as make_qkx3_quants leaves them in L.
template <int N>
GQ_FN void gq_qkx_levels(int nmax, const GqQkxFit& fit, const float* x, gq_u8* L) {
    GQ_UNROLL
    for (int i = 0; i < N; ++i) L[i] = (gq_u8)gq_qkx_fit_level(nmax, fit, x[i]);
}

// ggml's make_qkx3_quants: gq_qkx3_search, its levels written to L (N of them). Writes -min to
// *the_min and returns the scale.
template <int N>
GQ_FN float gq_make_qkx3_quants(int nmax, const float* x, const float* weights, gq_u8* L, float* the_min,
                                float rmin, float rdelta, int nstep, bool use_mad) {
    const GqQkxFit fit = gq_qkx3_search<N>(nmax, x, weights, rmin, rdelta, nstep, use_mad);
    gq_qkx_levels<N>(nmax, fit, x, L);
    *the_min = -fit.min;
    return fit.scale;
}
