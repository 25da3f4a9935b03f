// The host build of the K-quant kernels' per-super-block code (kquants.cuh), looped over rows and
// super-blocks on the CPU, so that CI (no GPU) checks it byte for byte against ggml's golden
// vectors. gpuquant/hostkernels.py compiles it with host_api.cpp, which dispatches to it.
#include "host_loop.h"
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

// ggml's two K-quant paths in one signature: the _impl path with an importance matrix, else _ref.
template <void (*Quantize)(const float*, gq_u8*), void (*QuantizeWeighted)(const float*, const float*, gq_u8*)>
void plain_or_weighted(const float* x, const float* qw, gq_u8* out) {
    if (qw) {
        QuantizeWeighted(x, qw, out);
    } else {
        Quantize(x, out);
    }
}

// A super-block's 256 floats, 32 at a time (the device gives each part its own thread).
template <void (*DequantizePart)(const gq_u8*, int, float*)>
void all_parts(const gq_u8* in, float* y) {
    for (int part = 0; part < 8; ++part) DequantizePart(in, part, y + 32 * part);
}

bool superblock_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        case GQ_Q2_K:
            *f = {GQ_QK_K, GQ_Q2_K_BYTES,
                  plain_or_weighted<gq_quantize_superblock_q2_k, gq_quantize_superblock_q2_k_weighted>,
                  all_parts<gq_dequantize_part_q2_k>};
            return true;
        case GQ_Q3_K:
            *f = {GQ_QK_K, GQ_Q3_K_BYTES,
                  plain_or_weighted<gq_quantize_superblock_q3_k, gq_quantize_superblock_q3_k_weighted>,
                  all_parts<gq_dequantize_part_q3_k>};
            return true;
        case GQ_Q4_K:
            *f = {GQ_QK_K, GQ_Q4_K_BYTES,
                  plain_or_weighted<gq_quantize_superblock_q4_k, gq_quantize_superblock_q4_k_weighted>,
                  all_parts<gq_dequantize_part_q4_k>};
            return true;
        case GQ_Q5_K:
            *f = {GQ_QK_K, GQ_Q5_K_BYTES,
                  plain_or_weighted<gq_quantize_superblock_q5_k, gq_quantize_superblock_q5_k_weighted>,
                  all_parts<gq_dequantize_part_q5_k>};
            return true;
        case GQ_Q6_K:
            *f = {GQ_QK_K, GQ_Q6_K_BYTES,
                  plain_or_weighted<gq_quantize_superblock_q6_k, gq_quantize_superblock_q6_k_weighted>,
                  all_parts<gq_dequantize_part_q6_k>};
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
    GqHostFormat f;
    if (!superblock_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_quantize_rows(f, x, imatrix, out, nrows, n_per_row);
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_kquants_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!superblock_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_dequantize_rows(f, q, y, nrows, n_per_row);
}

}  // extern "C"
