// The host build of the lattice IQ types' per-block code (lattice.cuh): IQ3_XXS, IQ3_S, IQ2_S,
// IQ2_XS, IQ2_XXS, IQ1_S, IQ1_M. Their lattice tables come from Python (gpuquant/hostkernels.py
// hands over the NumPy backend's Lattice arrays through gq_set_lattice before the first call), so the host build,
// the CUDA kernels and the NumPy backend search the very same neighbour lists.
#include "host_loop.h"
#include "lattice.cuh"

namespace {

enum GqTypeId {
    GQ_IQ2_XXS = 16,
    GQ_IQ2_XS = 17,
    GQ_IQ3_XXS = 18,
    GQ_IQ3_S = 21,
    GQ_IQ2_S = 22,
    GQ_IQ1_S = 19,
    GQ_IQ1_M = 29,
};

// One lattice per type (IQ2_XXS: 256 points, IQ2_XS: 512, IQ2_S: 1024, IQ3_XXS: 256, IQ3_S: 512,
// IQ1_S and IQ1_M: 2048).
GqLattice g_lattice[7];
bool g_ready[7];

int lattice_slot(int type_id) {
    switch (type_id) {
        case GQ_IQ2_XXS: return 0;
        case GQ_IQ2_XS: return 1;
        case GQ_IQ2_S: return 2;
        case GQ_IQ3_XXS: return 3;
        case GQ_IQ3_S: return 4;
        case GQ_IQ1_S: return 5;
        case GQ_IQ1_M: return 6;
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

#define GQ_LATTICE_FORMAT(NAME, SLOT, BYTES) \
    {256, BYTES, quantize_with_lattice<gq_quantize_block_##NAME, SLOT>, dequantize_with_lattice<gq_dequantize_block_##NAME, SLOT>}

bool block_format(int type_id, GqHostFormat* f) {
    switch (type_id) {
        case GQ_IQ2_XXS: *f = GQ_LATTICE_FORMAT(iq2_xxs, 0, GQ_IQ2_XXS_BYTES); return true;
        case GQ_IQ2_XS: *f = GQ_LATTICE_FORMAT(iq2_xs, 1, GQ_IQ2_XS_BYTES); return true;
        case GQ_IQ2_S: *f = GQ_LATTICE_FORMAT(iq2_s, 2, GQ_IQ2_S_BYTES); return true;
        case GQ_IQ3_XXS: *f = GQ_LATTICE_FORMAT(iq3_xxs, 3, GQ_IQ3_XXS_BYTES); return true;
        case GQ_IQ3_S: *f = GQ_LATTICE_FORMAT(iq3_s, 4, GQ_IQ3_S_BYTES); return true;
        case GQ_IQ1_S: *f = GQ_LATTICE_FORMAT(iq1_s, 5, GQ_IQ1_S_BYTES); return true;
        case GQ_IQ1_M: *f = GQ_LATTICE_FORMAT(iq1_m, 6, GQ_IQ1_M_BYTES); return true;
        default: return false;
    }
}

const int kNotReady = -3;

}  // namespace

extern "C" {

// The lattice of a type, as arrays that stay alive for the library's life (the caller keeps them).
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

int gq_lattice_quantize(int type_id, const float* x, const float* imatrix, gq_u8* out, gq_i64 nrows,
                        gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!g_ready[lattice_slot(type_id)]) return kNotReady;
    return gq_host_quantize_rows(f, x, imatrix, out, nrows, n_per_row);
}

int gq_lattice_dequantize(int type_id, const gq_u8* q, float* y, gq_i64 nrows, gq_i64 n_per_row) {
    GqHostFormat f;
    if (!block_format(type_id, &f)) return GQ_UNKNOWN_TYPE;
    if (!g_ready[lattice_slot(type_id)]) return kNotReady;
    return gq_host_dequantize_rows(f, q, y, nrows, n_per_row);
}

}  // extern "C"
