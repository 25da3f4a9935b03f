// The host build of the kernels' per-block code: the same functions as the CUDA kernels, looped
// over rows and blocks on the CPU. CI has no GPU, so this is how it checks the kernel code byte for
// byte against ggml's golden vectors. Build (gpuquant/hostkernels.py does it):
//   g++ -O2 -std=c++17 -ffp-contract=off -fPIC -shared -I kernels kernels/host_*.cpp -o libgqhost.so
// This file: F16, BF16 and the legacy 32-blocks; kernels/host_api.cpp dispatches to each family.
#include "host_loop.h"
#include "legacy.cuh"

// The F16/BF16 loops store 16-bit words as they are: GGUF is little-endian, and so must the host be.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the host build needs a little-endian CPU");

namespace {

// ggml type ids (ggml.h), the ones this build implements.
enum GqTypeId {
    GQ_F16 = 1,
    GQ_Q4_0 = 2,
    GQ_Q4_1 = 3,
    GQ_Q5_0 = 6,
    GQ_Q5_1 = 7,
    GQ_Q8_0 = 8,
    GQ_BF16 = 30,
};

typedef void (*WeightedBlockQuantizer)(const float* x, const float* qw, float sigma2, gq_u8* out);

struct LegacyFormat {
    GqHostFormat plain;  // its quantize ignores the imatrix: ggml's quantize_row_*_ref
    WeightedBlockQuantizer quantize_weighted;  // ggml's *_impl; null: the format ignores an imatrix
};

bool legacy_format(int type_id, LegacyFormat* f) {
    switch (type_id) {
        case GQ_Q4_0:
            *f = {{GQ_QK, GQ_Q4_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_q4_0>, gq_dequantize_block_q4_0},
                  gq_quantize_block_q4_0_weighted};
            return true;
        case GQ_Q4_1:
            *f = {{GQ_QK, GQ_Q4_1_BYTES, gq_ignoring_imatrix<gq_quantize_block_q4_1>, gq_dequantize_block_q4_1},
                  gq_quantize_block_q4_1_weighted};
            return true;
        case GQ_Q5_0:
            *f = {{GQ_QK, GQ_Q5_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_q5_0>, gq_dequantize_block_q5_0},
                  gq_quantize_block_q5_0_weighted};
            return true;
        case GQ_Q5_1:
            *f = {{GQ_QK, GQ_Q5_1_BYTES, gq_ignoring_imatrix<gq_quantize_block_q5_1>, gq_dequantize_block_q5_1},
                  gq_quantize_block_q5_1_weighted};
            return true;
        case GQ_Q8_0:
            *f = {{GQ_QK, GQ_Q8_0_BYTES, gq_ignoring_imatrix<gq_quantize_block_q8_0>, gq_dequantize_block_q8_0},
                  nullptr};
            return true;
        default:
            return false;
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
// floats) may be null. Returns 0, or a negative GqStatus.
int gq_legacy_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows, gq_i64 n_per_row) {
    const gq_i64 n = nrows * n_per_row;
    // One loop per type, each storing whole 16-bit words, so that the compiler vectorizes them
    // (the conversions are integer selects: no byte can change).
    if (type_id == GQ_F16) {
        for (gq_i64 i = 0; i < n; ++i) {
            const gq_u16 h = gq_fp32_to_fp16(x[i]);
            memcpy(out + 2 * i, &h, 2);
        }
        return GQ_OK;
    }
    if (type_id == GQ_BF16) {
        for (gq_i64 i = 0; i < n; ++i) {
            const gq_u16 h = gq_fp32_to_bf16(x[i]);
            memcpy(out + 2 * i, &h, 2);
        }
        return GQ_OK;
    }
    LegacyFormat f;
    if (!legacy_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!imatrix || !f.quantize_weighted) return gq_host_quantize_rows(f.plain, x, nullptr, out, nrows, n_per_row);
    // The weighted search needs the whole row's mean square first.
    if (n_per_row % GQ_QK != 0) return GQ_BAD_ROW_LENGTH;
    const gq_i64 blocks_per_row = n_per_row / GQ_QK;
    const int bytes = f.plain.bytes;
    for (gq_i64 r = 0; r < nrows; ++r) {
        const float* xr = x + r * n_per_row;
        gq_u8* qr = out + r * blocks_per_row * bytes;
        const float sigma2 = row_sigma2(xr, n_per_row);
        for (gq_i64 b = 0; b < blocks_per_row; ++b) {
            f.quantize_weighted(xr + b * GQ_QK, imatrix + b * GQ_QK, sigma2, qr + b * bytes);
        }
    }
    return GQ_OK;
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns 0, or a negative GqStatus.
int gq_legacy_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    const gq_i64 n = nrows * n_per_row;
    if (type_id == GQ_F16 || type_id == GQ_BF16) {
        for (gq_i64 i = 0; i < n; ++i) {
            const gq_u16 h = gq_load_u16(q + 2 * i);
            y[i] = type_id == GQ_F16 ? gq_fp16_to_fp32(h) : gq_bf16_to_fp32(h);
        }
        return GQ_OK;
    }
    LegacyFormat f;
    if (!legacy_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    return gq_host_dequantize_rows(f.plain, q, y, nrows, n_per_row);
}

}  // extern "C"
