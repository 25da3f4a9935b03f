// The host build's entry points: each type family's host_<family>.cpp exports a quantize and a
// dequantize function that answers GQ_UNKNOWN_TYPE (-1) for types it does not own; these two
// functions ask each family in turn. Add a family by adding one line to each table.
#include <cstdint>

typedef int (*GqQuantizeFn)(int, const float*, const float*, std::uint8_t*, std::int64_t, std::int64_t);
typedef int (*GqDequantizeFn)(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);

extern "C" {
int gq_legacy_quantize(int, const float*, const float*, std::uint8_t*, std::int64_t, std::int64_t);
int gq_legacy_dequantize(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);
int gq_kquants_quantize(int, const float*, const float*, std::uint8_t*, std::int64_t, std::int64_t);
int gq_kquants_dequantize(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);
int gq_more_quantize(int, const float*, const float*, std::uint8_t*, std::int64_t, std::int64_t);
int gq_more_dequantize(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);
int gq_lattice_quantize(int, const float*, const float*, std::uint8_t*, std::int64_t, std::int64_t);
int gq_lattice_dequantize(int, const std::uint8_t*, float*, std::int64_t, std::int64_t);
}

namespace {
const GqQuantizeFn kQuantizers[] = {
    gq_legacy_quantize,
    gq_kquants_quantize,
    gq_more_quantize,
    gq_lattice_quantize,
};
const GqDequantizeFn kDequantizers[] = {
    gq_legacy_dequantize,
    gq_kquants_dequantize,
    gq_more_dequantize,
    gq_lattice_dequantize,
};
const int kUnknownType = -1;
}  // namespace

extern "C" {

int gq_quantize(int type_id, const float* x, const float* imatrix, std::uint8_t* out, std::int64_t nrows,
                std::int64_t n_per_row) {
    for (GqQuantizeFn fn : kQuantizers) {
        const int status = fn(type_id, x, imatrix, out, nrows, n_per_row);
        if (status != kUnknownType) return status;
    }
    return kUnknownType;
}

int gq_dequantize(int type_id, const std::uint8_t* q, float* y, std::int64_t nrows, std::int64_t n_per_row) {
    for (GqDequantizeFn fn : kDequantizers) {
        const int status = fn(type_id, q, y, nrows, n_per_row);
        if (status != kUnknownType) return status;
    }
    return kUnknownType;
}

}  // extern "C"
