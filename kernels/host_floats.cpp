// The host build of the float family, F16 and BF16: elementwise conversions with common.cuh's
// gq_fp32_to_fp16 / gq_fp32_to_bf16 and back, the functions that floats.cu's kernels run (the
// family has no floats.cuh: every block family stores fp16 scales with them, so they live in
// common.cuh). gpuquant/hostkernels.py builds it with the other host_*.cpp files (the `native`
// backend, and CI's check of the kernels against ggml's golden bytes); host_api.cpp dispatches to
// gq_floats_quantize / gq_floats_dequantize.
#include "host_loop.h"

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

template <float (*Decode)(gq_u16)>
__attribute__((noinline)) int decode_all(const gq_u8* q, float* y, gq_i64 n) {
    for (gq_i64 i = 0; i < n; ++i) y[i] = Decode(gq_load_u16(q + 2 * i));
    return GQ_OK;
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
        case GQ_F16: return decode_all<gq_fp16_to_fp32>(q, y, nrows * n_per_row);
        case GQ_BF16: return decode_all<gq_bf16_to_fp32>(q, y, nrows * n_per_row);
        default: return GQ_UNKNOWN_TYPE;
    }
}

}  // extern "C"
