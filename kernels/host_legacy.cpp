// The host build of ggml's legacy 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): legacy.cuh's
// block functions, the very ones legacy.cu's kernels run, looped over rows and blocks on the CPU.
// gpuquant/hostkernels.py compiles every host_*.cpp into one library (with its CXX_FLAGS: no FMA
// contraction, no fast math), which is the `native` backend and how CI without a GPU checks the
// kernels' arithmetic byte for byte against ggml's golden vectors; host_api.cpp dispatches to
// gq_legacy_quantize / gq_legacy_dequantize.
#include "host_loop.h"
#include "legacy.cuh"

#define GQ_FAMILY_IS_legacy GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

typedef void (*WeightedBlockQuantizer)(const float* x, const float* qw, float sigma2, gq_u8* out);

// ggml's Q8_0 ignores an importance matrix (it has no *_impl quantizer): no weighted function, which
// this null stands in for, so that every legacy type's format below reads the same.
constexpr WeightedBlockQuantizer gq_quantize_block_q8_0_weighted = nullptr;

struct LegacyFormat {
    GqHostFormat plain;  // its quantize ignores the imatrix: ggml's quantize_row_*_ref
    WeightedBlockQuantizer quantize_weighted;  // ggml's *_impl; null: the format ignores an imatrix
};

// Every legacy type of the table (kernels/types.h).
#define GQ_LEGACY_FORMAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                                    \
    GQ_IF_THIS_FAMILY(FAMILY)(case GQ_##NAME: *f = {{BLOCK, BYTES,                                  \
                                                      gq_ignoring_imatrix<gq_quantize_block_##KERNEL>, \
                                                      gq_dequantize_block_##KERNEL},                \
                                                     gq_quantize_block_##KERNEL##_weighted};        \
                              return true;)

bool legacy_format(int type_id, LegacyFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_LEGACY_FORMAT)
        default: return false;
    }
}

// The row's mean square, summed in order as ggml's *_impl quantizers (and gq_row_sigma2) do.
float row_sigma2(const float* x, gq_i64 n_per_row) {
    float sum = 0.0f;
    for (gq_i64 j = 0; j < n_per_row; ++j) sum += x[j] * x[j];
    return sum / (float)n_per_row;
}

}  // namespace

extern "C" {

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes). imatrix (n_per_row
// floats) may be null. Returns 0, or a negative GqStatus (GQ_UNKNOWN_TYPE for another family's type).
int gq_legacy_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows, gq_i64 n_per_row) {
    LegacyFormat f;
    if (!legacy_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!imatrix || !f.quantize_weighted) return gq_host_quantize_rows(f.plain, x, nullptr, out, nrows, n_per_row);
    // The weighted search needs the whole row's mean square first.
    const int block = f.plain.block;
    if (n_per_row % block != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 blocks_per_row = n_per_row / block;
    const int bytes = f.plain.bytes;
    for (gq_i64 r = 0; r < nrows; ++r) {
        const float* xr = x + r * n_per_row;
        gq_u8* qr = out + r * blocks_per_row * bytes;
        const float sigma2 = row_sigma2(xr, n_per_row);
        for (gq_i64 b = 0; b < blocks_per_row; ++b) {
            f.quantize_weighted(xr + b * block, imatrix + b * block, sigma2, qr + b * bytes);
        }
    }
    return GQ_OK;
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_legacy_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    LegacyFormat f;
    if (!legacy_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_dequantize_rows(f.plain, q, y, nrows, n_per_row);
}

}  // extern "C"
