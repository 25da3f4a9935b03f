// The host build of ggml's ternary formats (TQ1_0, TQ2_0): ternary.cuh's per-block functions, the very ones
// ternary.cu's kernels run, looped over rows and blocks on the CPU. gpuquant/hostkernels.py builds it
// with the other host_*.cpp files (the `native` backend, and how CI without a GPU checks the kernels
// byte for byte against ggml's golden vectors); host_api.cpp dispatches to gq_ternary_quantize /
// gq_ternary_dequantize. ggml ignores an importance matrix for both types.
#include "host_loop.h"
#include "ternary.cuh"

#define GQ_FAMILY_IS_ternary GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// Every ternary type of the table (kernels/types.h).
bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_IMATRIX_IGNORING_FORMAT)
        default: return false;
    }
}

}  // namespace

GQ_HOST_ENTRY_POINTS(ternary, block_format)
