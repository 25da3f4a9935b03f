// The host build of ggml's 4-bit non-linear formats (IQ4_NL, IQ4_XS): iq4.cuh's per-block functions,
// the very ones iq4.cu's kernels run (there IQ4_XS's sub-blocks get a thread each), looped over rows
// and blocks on the CPU. gpuquant/hostkernels.py builds it with the other host_*.cpp files (the
// `native` backend, and how CI without a GPU checks the kernels byte for byte against ggml's golden
// vectors); host_api.cpp dispatches to gq_iq4_quantize / gq_iq4_dequantize.
#include "host_loop.h"
#include "iq4.cuh"

#define GQ_FAMILY_IS_iq4 GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// Every iq4 type of the table (kernels/types.h); its quantizer takes the block's importance weights
// (or null) itself.
#define GQ_IQ4_FORMAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) \
    GQ_IF_THIS_FAMILY(FAMILY)(                                \
        case GQ_##NAME: *f = {BLOCK, BYTES, gq_quantize_block_##KERNEL, gq_dequantize_block_##KERNEL}; return true;)

bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_IQ4_FORMAT)
        default: return false;
    }
}

}  // namespace

GQ_HOST_ENTRY_POINTS(iq4, block_format)
