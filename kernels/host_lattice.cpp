// The host build of the lattice IQ types (IQ3_XXS, IQ3_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_S, IQ1_M):
// lattice.cuh's per-block functions, the very ones lattice.cu's kernels run, looped over rows and
// super-blocks on the CPU (the `native` backend, and CI's check against ggml's golden bytes).
// Their lattice tables come from Python (gpuquant/hostkernels.py hands over the NumPy backend's
// Lattice arrays through gq_set_lattice before the first call), so the host build, the CUDA kernels
// and the NumPy backend search the very same neighbour lists.
#include "host_loop.h"
#include "lattice.cuh"

#define GQ_FAMILY_IS_lattice GQ_THIS_FAMILY
GQ_FOR_EACH_TYPE(GQ_CHECK_BYTES)

namespace {

// One lattice slot per lattice type of the table (kernels/types.h), in the table's order. The
// lattices: IQ2_XXS 256 points, IQ2_XS 512, IQ2_S 1024, IQ3_XXS 256, IQ3_S 512, IQ1_S and IQ1_M 2048.
#define GQ_LATTICE_SLOT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) GQ_IF_THIS_FAMILY(FAMILY)(SLOT_##NAME, )
enum LatticeSlot { GQ_FOR_EACH_TYPE(GQ_LATTICE_SLOT) kLatticeSlots };

GqLattice g_lattice[kLatticeSlots];
bool g_ready[kLatticeSlots];

#define GQ_LATTICE_SLOT_CASE(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) \
    GQ_IF_THIS_FAMILY(FAMILY)(case GQ_##NAME: return SLOT_##NAME;)

int lattice_slot(int type_id) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_LATTICE_SLOT_CASE)
        default: return -1;
    }
}

// The per-type block functions take the lattice; host_loop.h's formats take (x, qw, out).
template <void (*Quantize)(const GqLattice&, const float*, const float*, gq_u8*), int Slot>
void quantize_with_lattice(const float* x, const float* qw, gq_u8* out) {
    Quantize(g_lattice[Slot], x, qw, out);
}

template <void (*Dequantize)(const GqLattice&, const gq_u8*, float*), int Slot>
void dequantize_with_lattice(const gq_u8* in, float* y) {
    Dequantize(g_lattice[Slot], in, y);
}

#define GQ_LATTICE_FORMAT(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL)                                     \
    GQ_IF_THIS_FAMILY(FAMILY)(case GQ_##NAME: *f = {BLOCK, BYTES,                                     \
                                                    quantize_with_lattice<gq_quantize_block_##KERNEL, \
                                                                          SLOT_##NAME>,               \
                                                    dequantize_with_lattice<gq_dequantize_block_##KERNEL, \
                                                                            SLOT_##NAME>};            \
                              return true;)

bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        GQ_FOR_EACH_TYPE(GQ_LATTICE_FORMAT)
        default: return false;
    }
}

const int kNotReady = -3;

}  // namespace

extern "C" {

// The lattice of a type, as arrays that stay alive for the library's life (the caller keeps them).
// The parameters are in the field order of the NamedTuple LatticeTables (gpuquant/backends/numpy/
// lattice.py; gpuquant.hostkernels.lattice_tables returns it): grid_of_code, neighbour_start,
// neighbour_count, neighbours, level_index, values, ksigns, dims, bits. That NamedTuple is the one
// statement of the order, which GqLattice (lattice.cuh) and GQ_LATTICE_PARAMS (lattice.cu) keep too.
int gq_set_lattice(int type_id, const gq_i32* grid_of_code, const gq_i32* neighbour_start,
                   const gq_i32* neighbour_count, const gq_i32* neighbours, const gq_u8* level_index,
                   const gq_u8* values, const gq_u8* ksigns, int dims, int bits) {
    const int slot = lattice_slot(type_id);
    if (slot < 0) return GQ_UNKNOWN_TYPE;
    g_lattice[slot] = {grid_of_code, neighbour_start, neighbour_count, neighbours, level_index, values, ksigns,
                       dims, bits};
    g_ready[slot] = true;
    return GQ_OK;
}

// Quantizes nrows rows of n_per_row floats into out (nrows * row_bytes bytes). imatrix (n_per_row
// floats) may be null. Returns 0, or a negative GqStatus (GQ_UNKNOWN_TYPE for another family's
// type), or kNotReady before gq_set_lattice gave the type's lattice.
int gq_lattice_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows,
                        gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!g_ready[lattice_slot(type_id)]) return kNotReady;
    return gq_host_quantize_rows(f, x, imatrix, out, nrows, n_per_row);
}

// Dequantizes nrows rows (n_per_row weights each) from q into y. Returns as gq_lattice_quantize.
int gq_lattice_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!g_ready[lattice_slot(type_id)]) return kNotReady;
    return gq_host_dequantize_rows(f, q, y, nrows, n_per_row);
}

}  // extern "C"
