// The host build of the float family, F16 and BF16: elementwise conversions with common.cuh's
// gq_fp32_to_fp16 / gq_fp32_to_bf16, the functions that floats.cu's kernels run (the family has no
// floats.cuh: every block family stores fp16 scales with them, so they live in common.cuh), and
// back with vector code that gives gq_fp16_to_fp32's / gq_bf16_to_fp32's bits (the widening of
// every F16/BF16 source, a hot path). gpuquant/hostkernels.py builds it with the other host_*.cpp
// files (the `native` backend, and CI's check of the kernels against ggml's golden bytes);
// host_api.cpp dispatches to gq_floats_quantize / gq_floats_dequantize.
#include "host_loop.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// The loops store 16-bit words as they are: GGUF is little-endian, and so must the host be.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the host build needs a little-endian CPU");

#define GQ_FAMILY_IS_floats GQ_THIS_FAMILY

// Every float type of the table (kernels/types.h) is one of the two converted here, a 16-bit word
// per weight.
#define GQ_CHECK_FLOAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                                  \
    GQ_IF_THIS_FAMILY(FAMILY)(static_assert((GQ_##NAME == GQ_F16 || GQ_##NAME == GQ_BF16) && \
                                                BLOCK == 1 && BYTES == 2,                     \
                                            #NAME ": host_floats.cpp has no conversion for it");)
GQ_FOR_EACH_TYPE(GQ_CHECK_FLOAT)

namespace {

// One loop per type, each storing whole 16-bit words, so that the compiler vectorizes it (the
// conversions are integer selects: no byte can change). Each loop is a function of its own: inlined
// into the switch, the branchy F16 conversion ran 30% slower with GCC 12 (1.9 against 1.5 ms per
// million weights).
template <gq_u16 (*Encode)(float)>
__attribute__((noinline)) int encode_all(const float* x, gq_u8* out, gq_i64 n) {
    for (gq_i64 i = 0; i < n; ++i) {
        const gq_u16 h = Encode(x[i]);
        memcpy(out + 2 * i, &h, 2);
    }
    return GQ_OK;
}

// ---------------------------------------------------------------- widening F16 and BF16 to float32
// The pipeline reads every F16 and BF16 source through these (the native backend's dequantize, over
// its threads), so they run at memory speed rather than element by element. The bits are
// gq_fp16_to_fp32's and gq_bf16_to_fp32's for every input (tests/test_widening.py checks all 65536).

// gq_fp16_to_fp32 in integer selects only, so that the compiler vectorizes the loop (its
// subnormal while loop does not; an int -> float conversion would not vectorize either, as it
// counts as an operation that may trap). A subnormal half m * 2^-24 (0 < m < 2^10) is normalized
// by shifting m's leading one up to bit 15 in steps of 8, 4, 2 and 1: 2^-24 * m = 1.f * 2^(-15 - n)
// after n steps' shifts.
static inline gq_u32 fp16_to_fp32_bits(gq_u32 h) {
    const gq_u32 sign = (h & 0x8000u) << 16;
    const gq_u32 magnitude = h & 0x7FFFu;
    const gq_u32 shifted = magnitude << 13;
    const gq_u32 normal = shifted + (112u << 23);  // rebias the exponent: 15 -> 127
    const gq_u32 special = shifted | 0x7F800000u | (magnitude > 0x7C00u ? 0x00400000u : 0u);  // inf, quiet NaN
    gq_u32 u = magnitude << 6, n = 0;  // magnitude < 2^10 where it is used
    if (u < 0x0100u) { u <<= 8; n += 8; }
    if (u < 0x1000u) { u <<= 4; n += 4; }
    if (u < 0x4000u) { u <<= 2; n += 2; }
    if (u < 0x8000u) { u <<= 1; n += 1; }
    const gq_u32 subnormal = magnitude == 0 ? 0u : ((112u - n) << 23) | ((u & 0x7FFFu) << 8);
    return sign | (magnitude < 0x0400u ? subnormal : magnitude >= 0x7C00u ? special : normal);
}

__attribute__((noinline)) void widen_f16_portable(const gq_u8* q, float* y, gq_i64 n) {
    for (gq_i64 i = 0; i < n; ++i) {
        gq_u16 h;
        memcpy(&h, q + 2 * i, 2);
        const gq_u32 w = fp16_to_fp32_bits(h);
        memcpy(y + i, &w, 4);
    }
}

// The conversion instruction (vcvtph2ps) where the CPU has it (the host build is -march=native): it
// is exact, and quiets a signalling NaN by setting bit 22 with sign and payload kept, as
// gq_fp16_to_fp32 does; it ignores MXCSR's DAZ (checked), so subnormal halves come out exact
// whatever the float environment. The tail, and CPUs without it, take the portable loop.
__attribute__((noinline)) void widen_f16(const gq_u8* q, float* y, gq_i64 n) {
    gq_i64 i = 0;
#if defined(__AVX512F__)
    for (; i + 32 <= n; i += 32) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * i));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 2 * i + 32));
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(a));
        _mm512_storeu_ps(y + i + 16, _mm512_cvtph_ps(b));
    }
#elif defined(__F16C__)
    for (; i + 16 <= n; i += 16) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 2 * i));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 2 * i + 16));
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(a));
        _mm256_storeu_ps(y + i + 8, _mm256_cvtph_ps(b));
    }
#endif
    widen_f16_portable(q + 2 * i, y + i, n - i);
}

// BF16 is the top half of a float32: a shift, written on whole words so that it vectorizes.
__attribute__((noinline)) void widen_bf16(const gq_u8* q, float* y, gq_i64 n) {
    for (gq_i64 i = 0; i < n; ++i) {
        gq_u16 h;
        memcpy(&h, q + 2 * i, 2);
        const gq_u32 w = (gq_u32)h << 16;
        memcpy(y + i, &w, 4);
    }
}

}  // namespace

extern "C" {

// Converts nrows * n_per_row floats into 16-bit words; an importance matrix means nothing here.
// Returns 0, or GQ_UNKNOWN_TYPE for another family's type.
int gq_floats_quantize(int type_id, const float* x, const float*, gq_u8* out, gq_i64 nrows, gq_i64 n_per_row) {
    switch (type_id) {
        case GQ_F16: return encode_all<gq_fp32_to_fp16>(x, out, nrows * n_per_row);
        case GQ_BF16: return encode_all<gq_fp32_to_bf16>(x, out, nrows * n_per_row);
        default: return GQ_UNKNOWN_TYPE;
    }
}

int gq_floats_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    switch (type_id) {
        case GQ_F16: widen_f16(q, y, nrows * n_per_row); return GQ_OK;
        case GQ_BF16: widen_bf16(q, y, nrows * n_per_row); return GQ_OK;
        default: return GQ_UNKNOWN_TYPE;
    }
}

}  // extern "C"
