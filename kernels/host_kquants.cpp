// The host build of the K-quant kernels' per-super-block code (kquants.cuh), looped over rows and
// super-blocks on the CPU, so that CI (no GPU) checks it byte for byte against ggml's golden
// vectors. gpuquant/hostkernels.py compiles it with host_api.cpp, which dispatches to it.
#include "kquants.cuh"

namespace {

// ggml type ids (ggml.h) of the K-quants.
enum GqKTypeId {
    GQ_Q2_K = 10,
    GQ_Q3_K = 11,
    GQ_Q4_K = 12,
    GQ_Q5_K = 13,
    GQ_Q6_K = 14,
};

enum GqStatus { GQ_OK = 0, GQ_UNKNOWN_TYPE = -1, GQ_BAD_ROW_LENGTH = -2 };

typedef void (*SuperblockQuantizer)(const float* x, gq_u8* out);
typedef void (*WeightedSuperblockQuantizer)(const float* x, const float* qw, gq_u8* out);
typedef void (*PartDequantizer)(const gq_u8* in, int part, float* y);

struct SuperblockFormat {
    int bytes;
    SuperblockQuantizer quantize;
    WeightedSuperblockQuantizer quantize_weighted;
    PartDequantizer dequantize_part;
};

bool superblock_format(int type_id, SuperblockFormat* f) {
    switch (type_id) {
        case GQ_Q2_K:
            *f = {GQ_Q2_K_BYTES, gq_quantize_superblock_q2_k, gq_quantize_superblock_q2_k_weighted,
                  gq_dequantize_part_q2_k};
            return true;
        case GQ_Q3_K:
            *f = {GQ_Q3_K_BYTES, gq_quantize_superblock_q3_k, gq_quantize_superblock_q3_k_weighted,
                  gq_dequantize_part_q3_k};
            return true;
        case GQ_Q4_K:
            *f = {GQ_Q4_K_BYTES, gq_quantize_superblock_q4_k, gq_quantize_superblock_q4_k_weighted,
                  gq_dequantize_part_q4_k};
            return true;
        case GQ_Q5_K:
            *f = {GQ_Q5_K_BYTES, gq_quantize_superblock_q5_k, gq_quantize_superblock_q5_k_weighted,
                  gq_dequantize_part_q5_k};
            return true;
        case GQ_Q6_K:
            *f = {GQ_Q6_K_BYTES, gq_quantize_superblock_q6_k, gq_quantize_superblock_q6_k_weighted,
                  gq_dequantize_part_q6_k};
            return true;
        default:
            return false;
    }
}

}  // namespace

extern "C" {

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes). imatrix (n_per_row
// floats) may be null. Returns 0, or a negative GqStatus (-1 for a type this family does not own).
int gq_kquants_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows,
                        gq_i64 n_per_row) {
    SuperblockFormat f;
    if (!superblock_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (n_per_row % GQ_QK_K != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 per_row = n_per_row / GQ_QK_K;
    for (gq_i64 r = 0; r < nrows; ++r) {
        for (gq_i64 b = 0; b < per_row; ++b) {
            const float* xb = x + (r * per_row + b) * GQ_QK_K;
            gq_u8* qb = out + (r * per_row + b) * f.bytes;
            if (imatrix) {
                f.quantize_weighted(xb, imatrix + b * GQ_QK_K, qb);
            } else {
                f.quantize(xb, qb);
            }
        }
    }
    return GQ_OK;
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_kquants_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    SuperblockFormat f;
    if (!superblock_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (n_per_row % GQ_QK_K != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 n_superblocks = nrows * (n_per_row / GQ_QK_K);
    for (gq_i64 b = 0; b < n_superblocks; ++b) {
        for (int part = 0; part < 8; ++part) f.dequantize_part(q + b * f.bytes, part, y + b * GQ_QK_K + 32 * part);
    }
    return GQ_OK;
}

}  // extern "C"
