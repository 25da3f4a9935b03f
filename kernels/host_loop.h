// The host build's loops over rows and blocks, shared by the host_<family>.cpp files: each family
// describes its block formats as GqHostFormat values and its entry points run these loops. (Host
// C++ only: the CUDA kernels have their own launch geometry.)
#pragma once

#include "common.cuh"

// What the families' gq_<family>_quantize / _dequantize return; host_api.cpp asks the next family
// on GQ_UNKNOWN_TYPE.
enum GqStatus { GQ_OK = 0, GQ_UNKNOWN_TYPE = -1, GQ_BAD_ROW_LENGTH = -2 };

// A block format: `block` weights in, `bytes` bytes out. quantize gets the block's slice of the
// importance matrix as qw, or null without one; dequantize writes the block's `block` floats.
struct GqHostFormat {
    int block;
    int bytes;
    void (*quantize)(const float* x, const float* qw, gq_u8* out);
    void (*dequantize)(const gq_u8* in, float* y);
};

// For the formats whose quantizer takes no importance matrix (ggml ignores it for them).
template <void (*Quantize)(const float*, gq_u8*)>
void gq_ignoring_imatrix(const float* x, const float*, gq_u8* out) {
    Quantize(x, out);
}

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes); block b of a row
// takes imatrix[b * block ...] when imatrix (n_per_row floats) is not null.
static inline int gq_host_quantize_rows(const GqHostFormat& f, const float* x, const float* imatrix, gq_u8* out,
                                        gq_i64 nrows, gq_i64 n_per_row) {
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

// Dequantizes nrows rows (n_per_row weights each) from q into y.
static inline int gq_host_dequantize_rows(const GqHostFormat& f, const gq_u8* q, float* y, gq_i64 nrows,
                                          gq_i64 n_per_row) {
    if (n_per_row % f.block != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 n_blocks = nrows * (n_per_row / f.block);
    for (gq_i64 b = 0; b < n_blocks; ++b) f.dequantize(q + b * f.bytes, y + b * f.block);
    return GQ_OK;
}
