// CUDA kernels for the lattice IQ types: IQ3_XXS, IQ3_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_S, IQ1_M.
// Loaded by the CuPy backend (gpuquant/backends/cupy) through NVRTC with --fmad=false -ftz=false.
// One thread quantizes (or dequantizes) one super-block of 256 weights with the lattice.cuh
// functions that the host build (host_lattice.cpp) also runs. The lattice tables live in device
// memory; each kernel gets them as pointers (the GqLattice fields, in order).
#include "lattice.cuh"

// The lattice parameters every kernel takes first, in the field order of the NamedTuple
// LatticeTables (gpuquant/backends/numpy/lattice.py; gpuquant.hostkernels.lattice_tables returns it):
// grid_of_code, neighbour_start, neighbour_count, neighbours, level_index, values, ksigns, dims,
// bits. That NamedTuple is the one statement of the order, which GqLattice (lattice.cuh) and
// gq_set_lattice (host_lattice.cpp) keep too.
#define GQ_LATTICE_PARAMS                                                                              \
    const gq_i32 *__restrict__ grid_of_code, const gq_i32 *__restrict__ neighbour_start,               \
        const gq_i32 *__restrict__ neighbour_count, const gq_i32 *__restrict__ neighbours,             \
        const gq_u8 *__restrict__ level_index, const gq_u8 *__restrict__ values,                       \
        const gq_u8 *__restrict__ ksigns, int dims, int bits
#define GQ_LATTICE_STRUCT \
    {grid_of_code, neighbour_start, neighbour_count, neighbours, level_index, values, ksigns, dims, bits}

#define GQ_LATTICE_KERNELS(NAME, BYTES)                                                                     \
    extern "C" __global__ void gq_quantize_##NAME(GQ_LATTICE_PARAMS, const float* __restrict__ x,           \
                                                  gq_u8* __restrict__ out, gq_i64 n_blocks) {               \
        const gq_i64 b = gq_thread_index();                                                                 \
        if (b >= n_blocks) return;                                                                          \
        const GqLattice lat = GQ_LATTICE_STRUCT;                                                            \
        gq_u8 qb[BYTES];                                                                                    \
        gq_quantize_block_##NAME(lat, x + 256 * b, nullptr, qb);                                            \
        gq_copy_bytes<BYTES>(out + BYTES * b, qb);                                                          \
    }                                                                                                       \
    extern "C" __global__ void gq_quantize_##NAME##_imatrix(GQ_LATTICE_PARAMS, const float* __restrict__ x, \
                                                            const float* __restrict__ imatrix,               \
                                                            gq_u8* __restrict__ out, gq_i64 n_blocks,        \
                                                            gq_i64 blocks_per_row) {                         \
        const gq_i64 b = gq_thread_index();                                                                 \
        if (b >= n_blocks) return;                                                                          \
        const GqLattice lat = GQ_LATTICE_STRUCT;                                                            \
        gq_u8 qb[BYTES];                                                                                    \
        gq_quantize_block_##NAME(lat, x + 256 * b, imatrix + 256 * (b % blocks_per_row), qb);              \
        gq_copy_bytes<BYTES>(out + BYTES * b, qb);                                                          \
    }                                                                                                       \
    extern "C" __global__ void gq_dequantize_##NAME(GQ_LATTICE_PARAMS, const gq_u8* __restrict__ q,         \
                                                    float* __restrict__ y, gq_i64 n_blocks) {               \
        const gq_i64 b = gq_thread_index();                                                                 \
        if (b >= n_blocks) return;                                                                          \
        const GqLattice lat = GQ_LATTICE_STRUCT;                                                            \
        gq_dequantize_block_##NAME(lat, q + BYTES * b, y + 256 * b);                                        \
    }

GQ_LATTICE_KERNELS(iq3_xxs, GQ_IQ3_XXS_BYTES)
GQ_LATTICE_KERNELS(iq3_s, GQ_IQ3_S_BYTES)
GQ_LATTICE_KERNELS(iq2_s, GQ_IQ2_S_BYTES)
GQ_LATTICE_KERNELS(iq2_xs, GQ_IQ2_XS_BYTES)
GQ_LATTICE_KERNELS(iq2_xxs, GQ_IQ2_XXS_BYTES)
GQ_LATTICE_KERNELS(iq1_s, GQ_IQ1_S_BYTES)
GQ_LATTICE_KERNELS(iq1_m, GQ_IQ1_M_BYTES)
