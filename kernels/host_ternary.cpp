// The host build of ggml's ternary formats (TQ1_0, TQ2_0): ternary.cuh's per-block functions, the very ones
// ternary.cu's kernels run, looped over rows and blocks on the CPU. gpuquant/hostkernels.py builds it
// with the other host_*.cpp files (the `native` backend, and how CI without a GPU checks the kernels
// byte for byte against ggml's golden vectors); host_api.cpp dispatches to gq_ternary_quantize /
// gq_ternary_dequantize. ggml ignores an importance matrix for both types.
#include "host_loop.h"
#include "ternary.cuh"

#define GQ_FAMILY_IS_ternary GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// Every ternary type of the table (kernels/types.h).
bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_IMATRIX_IGNORING_FORMAT)
        default: return false;
    }
}

}  // namespace

extern "C" {

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes); imatrix is ignored.
// Returns 0, or a negative GqStatus (GQ_UNKNOWN_TYPE for another family's type).
int gq_ternary_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows,
                        gq_i64 n_per_row) {
    return gq_host_quantize<block_format>(type_id, x, imatrix, out, nrows, n_per_row);
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_ternary_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    return gq_host_dequantize<block_format>(type_id, q, y, nrows, n_per_row);
}

}  // extern "C"
