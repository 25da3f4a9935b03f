// The host build of the per-block code of IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0 and
// Q2_0: the same functions as the CUDA kernels (more_types.cu), looped over rows and blocks on the
// CPU, so that CI checks them byte for byte against ggml's golden vectors. Built with the other
// host_*.cpp files by gpuquant/hostkernels.py (g++ -ffp-contract=off); kernels/host_api.cpp
// dispatches to gq_more_quantize / gq_more_dequantize.
#include "fp4.cuh"
#include "host_loop.h"
#include "iq4.cuh"
#include "lowbit.cuh"
#include "ternary.cuh"

namespace {

// ggml type ids (ggml.h) of the types this file owns.
enum GqTypeId {
    GQ_IQ4_NL = 20,
    GQ_IQ4_XS = 23,
    GQ_TQ1_0 = 34,
    GQ_TQ2_0 = 35,
    GQ_MXFP4 = 39,
    GQ_NVFP4 = 40,
    GQ_Q1_0 = 41,
    GQ_Q2_0 = 42,
};

bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        case GQ_IQ4_NL:
            *f = {GQ_IQ4_BLOCK, GQ_IQ4_NL_BYTES, gq_quantize_block_iq4_nl, gq_dequantize_block_iq4_nl};
            return true;
        case GQ_IQ4_XS:
            *f = {GQ_IQ4_SUPER, GQ_IQ4_XS_BYTES, gq_quantize_block_iq4_xs, gq_dequantize_block_iq4_xs};
            return true;
        case GQ_TQ1_0:
            *f = {GQ_TQ_BLOCK, GQ_TQ1_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_tq1_0>, gq_dequantize_block_tq1_0};
            return true;
        case GQ_TQ2_0:
            *f = {GQ_TQ_BLOCK, GQ_TQ2_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_tq2_0>, gq_dequantize_block_tq2_0};
            return true;
        case GQ_MXFP4:
            *f = {GQ_MXFP4_BLOCK, GQ_MXFP4_BYTES, gq_ignoring_imatrix<gq_quantize_block_mxfp4>,
                  gq_dequantize_block_mxfp4};
            return true;
        case GQ_NVFP4:
            *f = {GQ_NVFP4_BLOCK, GQ_NVFP4_BYTES, gq_ignoring_imatrix<gq_quantize_block_nvfp4>,
                  gq_dequantize_block_nvfp4};
            return true;
        case GQ_Q1_0:
            *f = {GQ_Q1_0_BLOCK, GQ_Q1_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_q1_0>, gq_dequantize_block_q1_0};
            return true;
        case GQ_Q2_0:
            *f = {GQ_Q2_0_BLOCK, GQ_Q2_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_q2_0>, gq_dequantize_block_q2_0};
            return true;
        default:
            return false;
    }
}

}  // namespace

extern "C" {

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes). imatrix (n_per_row
// floats) may be null. Returns 0, or a negative GqStatus (GQ_UNKNOWN_TYPE for another family's type).
int gq_more_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_quantize_rows(f, x, imatrix, out, nrows, n_per_row);
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_more_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_dequantize_rows(f, q, y, nrows, n_per_row);
}

}  // extern "C"
