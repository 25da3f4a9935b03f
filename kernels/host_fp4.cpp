// The host build of ggml's E2M1 4-bit float formats (MXFP4, NVFP4): fp4.cuh's per-block functions, the very ones
// fp4.cu's kernels run, looped over rows and blocks on the CPU. gpuquant/hostkernels.py builds it
// with the other host_*.cpp files (the `native` backend, and how CI without a GPU checks the kernels
// byte for byte against ggml's golden vectors); host_api.cpp dispatches to gq_fp4_quantize /
// gq_fp4_dequantize. ggml ignores an importance matrix for both types.
#include "host_loop.h"
#include "fp4.cuh"

#define GQ_FAMILY_IS_fp4 GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// Every fp4 type of the table (kernels/types.h).
bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_IMATRIX_IGNORING_FORMAT)
        default: return false;
    }
}

}  // namespace

GQ_HOST_ENTRY_POINTS(fp4, block_format)
