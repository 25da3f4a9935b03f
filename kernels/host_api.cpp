// The host build's entry points: each type goes to its family's host_<family>.cpp, whose
// gq_<family>_quantize / gq_<family>_dequantize answer GQ_UNKNOWN_TYPE (-1) for types they do not
// own. The dispatch is the type table itself (kernels/types.h, generated from gpuquant/qtypes.py):
// a type of family F calls gq_F_quantize, so a new family needs its host_F.cpp and no line here.
#include <cstdint>

#include "types.h"

namespace {
const int kUnknownType = -1;
}  // namespace

// Every family's entry points, declared once per type of the family (a redeclaration is harmless).
#define GQ_DECLARE_FAMILY(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                                             \
    extern "C" int gq_##FAMILY##_quantize(int, const float*, const float*, std::uint8_t*, std::int64_t,      \
                                          std::int64_t);                                                     \
    extern "C" int gq_##FAMILY##_dequantize(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);
GQ_FOR_EACH_TYPE(GQ_DECLARE_FAMILY)

#define GQ_QUANTIZE_CASE(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) \
    case GQ_##NAME: return gq_##FAMILY##_quantize(type_id, x, imatrix, out, nrows, n_per_row);
#define GQ_DEQUANTIZE_CASE(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) \
    case GQ_##NAME: return gq_##FAMILY##_dequantize(type_id, q, y, nrows, n_per_row);

extern "C" {

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes); imatrix (n_per_row
// floats) may be null. Returns 0, or a negative status (host_loop.h's GqStatus, or a family's own).
int gq_quantize(int type_id, const float* x, const float* imatrix, std::uint8_t* out, std::int64_t nrows,
                std::int64_t n_per_row) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_QUANTIZE_CASE)
        default: return kUnknownType;
    }
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns as gq_quantize.
int gq_dequantize(int type_id, const std::uint8_t* q, float* y, std::int64_t nrows, std::int64_t n_per_row) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_DEQUANTIZE_CASE)
        default: return kUnknownType;
    }
}

}  // extern "C"
