// The host build's loops over rows and blocks, shared by the host_<family>.cpp files: each family
// describes its block formats as GqHostFormat values and its entry points run these loops. (Host
// C++ only: the CUDA kernels have their own launch geometry.)
#pragma once

#include "common.cuh"
#include "types.h"

// ---------------------------------------------------------------- a family's rows of the type table
// kernels/types.h (generated from gpuquant/qtypes.py) lists every type once, as X(NAME, ID, BLOCK,
// BYTES, FAMILY, KERNEL). A host_<family>.cpp claims its family with
//     #define GQ_FAMILY_IS_<family> GQ_THIS_FAMILY
// and writes the body of its X as GQ_IF_THIS_FAMILY(FAMILY)(...): the body stays for the rows of
// that family and vanishes for every other (GQ_FAMILY_IS_<other> is no macro, so the probe sees one
// argument where the claimed family's expands to two). So each file's dispatch lists exactly the
// table's types of its family, with the table's ids, blocks and bytes, and a type added to the
// table without its block functions fails to compile rather than going missing.
#define GQ_THIS_FAMILY ~, 1
#define GQ_PROBE_SECOND_(a, b, ...) b
#define GQ_PROBE_SECOND(...) GQ_PROBE_SECOND_(__VA_ARGS__)
#define GQ_IS_THIS_FAMILY(FAMILY) GQ_PROBE_SECOND(GQ_FAMILY_IS_##FAMILY, 0, ~)
#define GQ_KEEP_IF_1(...) __VA_ARGS__
#define GQ_KEEP_IF_0(...)
#define GQ_CAT_(a, b) a##b
#define GQ_CAT(a, b) GQ_CAT_(a, b)
#define GQ_IF_THIS_FAMILY(FAMILY) GQ_CAT(GQ_KEEP_IF_, GQ_IS_THIS_FAMILY(FAMILY))

// The table's bytes per block must be the .cuh's GQ_<NAME>_BYTES, which the CUDA kernels use:
// GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES) in a host_<family>.cpp checks its family's types.
#define GQ_CHECK_BYTES(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) \
    GQ_IF_THIS_FAMILY(FAMILY)(static_assert(BYTES == GQ_##NAME##_BYTES, #NAME ": types.h and the .cuh disagree");)

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

// ---------------------------------------------------------------- a family's entry points

// The format case of a type of this file's family whose block functions are
// gq_quantize_block_<kernel>(x, out) (ggml ignores an importance matrix for it) and
// gq_dequantize_block_<kernel>(in, y): GQ_FOR_EACH_TYPE(GQ_IMATRIX_IGNORING_FORMAT) in a switch.
#define GQ_IMATRIX_IGNORING_FORMAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                             \
    GQ_IF_THIS_FAMILY(FAMILY)(case GQ_##NAME: *f = {BLOCK, BYTES,                                      \
                                                    gq_ignoring_imatrix<gq_quantize_block_##KERNEL>,   \
                                                    gq_dequantize_block_##KERNEL};                     \
                              return true;)

// gq_<family>_quantize and gq_<family>_dequantize of a family whose block formats Format gives
// (false for another family's type, answered with GQ_UNKNOWN_TYPE).
template <bool (*Format)(int, GqHostFormat*)>
int gq_host_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows,
                     gq_i64 n_per_row) {
    GqHostFormat f;
    if (!Format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_quantize_rows(f, x, imatrix, out, nrows, n_per_row);
}

template <bool (*Format)(int, GqHostFormat*)>
int gq_host_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!Format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_dequantize_rows(f, q, y, nrows, n_per_row);
}

// gq_<family>_quantize and gq_<family>_dequantize, host_api.cpp's entry points, for a family whose
// formats one lookup gives (Format(type_id, &f)): 0, or a negative GqStatus (GQ_UNKNOWN_TYPE for
// another family's type). imatrix (n_per_row floats) may be null.
#define GQ_HOST_ENTRY_POINTS(FAMILY, FORMAT)                                                            \
    extern "C" int gq_##FAMILY##_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, \
                                          gq_i64 nrows, gq_i64 n_per_row) {                            \
        return gq_host_quantize<FORMAT>(type_id, x, imatrix, out, nrows, n_per_row);                    \
    }                                                                                                   \
    extern "C" int gq_##FAMILY##_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows,         \
                                            gq_i64 n_per_row) {                                         \
        return gq_host_dequantize<FORMAT>(type_id, q, y, nrows, n_per_row);                             \
    }
