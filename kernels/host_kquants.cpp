// The host build of the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): kquants.cuh's per-super-block
// functions, the very ones kquants.cu's kernels run, looped over rows and super-blocks on the CPU.
// gpuquant/hostkernels.py builds it with the other host_*.cpp files (the `native` backend, and how
// CI without a GPU checks the kernels byte for byte against ggml's golden vectors); host_api.cpp
// dispatches to gq_kquants_quantize / gq_kquants_dequantize.
#include "host_loop.h"
#include "kquants.cuh"

#define GQ_FAMILY_IS_kquants GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

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

// Every K-quant of the table (kernels/types.h).
#define GQ_KQUANT_FORMAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                                       \
    GQ_IF_THIS_FAMILY(FAMILY)(                                                                        \
        case GQ_##NAME: *f = {BLOCK, BYTES,                                                            \
                              plain_or_weighted<gq_quantize_superblock_##KERNEL,                       \
                                                gq_quantize_superblock_##KERNEL##_weighted>,           \
                              all_parts<gq_dequantize_part_##KERNEL>};                                 \
        return true;)

bool superblock_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_KQUANT_FORMAT)
        default: return false;
    }
}

}  // namespace

GQ_HOST_ENTRY_POINTS(kquants, superblock_format)
