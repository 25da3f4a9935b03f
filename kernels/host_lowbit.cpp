// The host build of ggml's Q1_0 and Q2_0: lowbit.cuh's per-block functions, the very ones
// lowbit.cu's kernels run, looped over rows and blocks on the CPU. gpuquant/hostkernels.py builds it
// with the other host_*.cpp files (the `native` backend, and how CI without a GPU checks the kernels
// byte for byte against ggml's golden vectors); host_api.cpp dispatches to gq_lowbit_quantize /
// gq_lowbit_dequantize. ggml ignores an importance matrix for both types.
#include "host_loop.h"
#include "lowbit.cuh"

#define GQ_FAMILY_IS_lowbit GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// Every lowbit type of the table (kernels/types.h).
bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_IMATRIX_IGNORING_FORMAT)
        default: return false;
    }
}

}  // namespace

GQ_HOST_ENTRY_POINTS(lowbit, block_format)
