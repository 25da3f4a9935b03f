// The host build of the per-block code of IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0 and
// Q2_0: the same functions as the CUDA kernels (more_types.cu), looped over rows and blocks on the
// CPU, so that CI checks them byte for byte against ggml's golden vectors. Built with the other
// host_*.cpp files by gpuquant/hostkernels.py (g++ -ffp-contract=off); kernels/host_api.cpp
// dispatches to gq_more_quantize / gq_more_dequantize.
#include "fp4.cuh"
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

enum GqStatus { GQ_OK = 0, GQ_UNKNOWN_TYPE = -1, GQ_BAD_ROW_LENGTH = -2 };

// qw: the block's slice of the importance matrix, or null (formats that ignore it never see it).
typedef void (*BlockQuantizer)(const float* x, const float* qw, gq_u8* out);
typedef void (*BlockDequantizer)(const gq_u8* in, float* y);

struct BlockFormat {
    int block;  // weights
    int bytes;
    BlockQuantizer quantize;
    BlockDequantizer dequantize;
};

// Adapters for the formats that take no importance matrix.
template <void (*Quantize)(const float*, gq_u8*)>
void ignoring_imatrix(const float* x, const float*, gq_u8* out) {
    Quantize(x, out);
}

bool block_format(int type_id, BlockFormat* f) {
    switch (type_id) {
        case GQ_IQ4_NL:
            *f = {GQ_IQ4_BLOCK, GQ_IQ4_NL_BYTES, gq_quantize_block_iq4_nl, gq_dequantize_block_iq4_nl};
            return true;
        case GQ_IQ4_XS:
            *f = {GQ_IQ4_SUPER, GQ_IQ4_XS_BYTES, gq_quantize_block_iq4_xs, gq_dequantize_block_iq4_xs};
            return true;
        case GQ_TQ1_0:
            *f = {GQ_TQ_BLOCK, GQ_TQ1_0_BYTES, ignoring_imatrix<gq_quantize_block_tq1_0>, gq_dequantize_block_tq1_0};
            return true;
        case GQ_TQ2_0:
            *f = {GQ_TQ_BLOCK, GQ_TQ2_0_BYTES, ignoring_imatrix<gq_quantize_block_tq2_0>, gq_dequantize_block_tq2_0};
            return true;
        case GQ_MXFP4:
            *f = {GQ_MXFP4_BLOCK, GQ_MXFP4_BYTES, ignoring_imatrix<gq_quantize_block_mxfp4>, gq_dequantize_block_mxfp4};
            return true;
        case GQ_NVFP4:
            *f = {GQ_NVFP4_BLOCK, GQ_NVFP4_BYTES, ignoring_imatrix<gq_quantize_block_nvfp4>, gq_dequantize_block_nvfp4};
            return true;
        case GQ_Q1_0:
            *f = {GQ_Q1_0_BLOCK, GQ_Q1_0_BYTES, ignoring_imatrix<gq_quantize_block_q1_0>, gq_dequantize_block_q1_0};
            return true;
        case GQ_Q2_0:
            *f = {GQ_Q2_0_BLOCK, GQ_Q2_0_BYTES, ignoring_imatrix<gq_quantize_block_q2_0>, gq_dequantize_block_q2_0};
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
    BlockFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (n_per_row % f.block != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 blocks_per_row = n_per_row / f.block;
    for (gq_i64 r = 0; r < nrows; ++r) {
        for (gq_i64 b = 0; b < blocks_per_row; ++b) {
            const gq_i64 block = r * blocks_per_row + b;
            f.quantize(x + block * f.block, imatrix ? imatrix + b * f.block : nullptr, out + block * f.bytes);
        }
    }
    return GQ_OK;
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_more_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    BlockFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (n_per_row % f.block != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 n_blocks = nrows * (n_per_row / f.block);
    for (gq_i64 b = 0; b < n_blocks; ++b) f.dequantize(q + b * f.bytes, y + b * f.block);
    return GQ_OK;
}

}  // extern "C"
