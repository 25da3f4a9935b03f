// ggml's lattice ("grid") IQ types, one super-block of 256 weights per call: IQ3_XXS, IQ3_S,
// IQ2_S, IQ2_XS, IQ2_XXS, IQ1_S and IQ1_M. A sub-block's magnitudes are coded as points of a fixed
// lattice (groups of 4 three-bit or 8 two-bit odd levels 2l+1; IQ1: groups of 8 levels -1, 0, 1
// shifted by 1/8) plus sign bits; a scale search tries a range of trial scales (IQ1: every split of
// the sorted weights into its three levels), snapping each group to the lattice (a group off the
// lattice takes the best of its precomputed neighbours), and keeps the best weighted least-squares
// fit. The same functions run in the CUDA kernels (lattice.cu) and in the host build
// (host_lattice.cpp). The lattice tables (the map from level codes to grid points and the neighbour
// lists) are built once by the NumPy backend's lattice module (its LatticeTables) and handed over as
// a GqLattice (host memory for the host build, device memory for the CUDA kernels), so that all
// three backends search the same lists.
#pragma once

#include "common.cuh"
#include "kquants.cuh"

// The fields in the order of the NamedTuple LatticeTables (gpuquant/backends/numpy/lattice.py), the
// one statement of that order: GQ_LATTICE_PARAMS (lattice.cu) and gq_set_lattice (host_lattice.cpp)
// take them so too.
struct GqLattice {
    const gq_i32* grid_of_code;     // [kmap size]: grid index of a level code, -1 off the lattice
    const gq_i32* neighbour_start;  // [kmap size]: first entry of a code's list in `neighbours`
    const gq_i32* neighbour_count;  // [kmap size]
    const gq_i32* neighbours;       // grid indices, by increasing distance, ties by index
    const gq_u8* level_index;       // [grid size, dims]: l of each level (the level is 2 l + 1)
    const gq_u8* values;            // [grid size, dims]: the levels as the dequantizer reads them
    const gq_u8* ksigns;            // [128]: 7 stored sign bits -> 8 with even parity
    int dims;                       // 4 (IQ3) or 8 (IQ2)
    int bits;                       // bits per level index: 3 (IQ3) or 2 (IQ2)
};

enum GqRefine {
    GQ_REFINE_OFF_GRID = 0,        // at the fitted scale, snap again the groups left off the grid
    GQ_REFINE_ALL_IF_ANY_OFF = 1,  // snap every group again once one was off (IQ3_S)
    GQ_REFINE_ALWAYS_ALL = 2,      // snap every group again, always (IQ2_XXS)
};

// The sub-block weights: qw sqrt(sigma2 + x^2), sigma2 = (2) sum(x^2) / 256 over the super-block;
// without an imatrix x^2, or share sigma2 + x^2 where share > 0 (IQ2_S).
GQ_FN void gq_lattice_weights(const float* x, const float* qw, bool doubled, float share, float* w) {
    float sumx2 = 0.0f;
    for (int i = 0; i < 256; ++i) sumx2 += x[i] * x[i];
    const float sigma2 = (doubled ? 2.0f * sumx2 : sumx2) / 256.0f;
    for (int i = 0; i < 256; ++i) {
        const float x2 = x[i] * x[i];
        if (qw) {
            w[i] = qw[i] * sqrtf(sigma2 + x2);
        } else if (share > 0.0f) {
            w[i] = share * sigma2 + x2;
        } else {
            w[i] = x2;
        }
    }
}

// Magnitudes and sign bits of each 8 weights (bit k: weight k is negative, NaN counted so); with
// even_parity, a group of odd parity keeps the sign of its weight of least w x^2 (the first such),
// whose magnitude then goes negative, and only 7 bits are kept.
GQ_FN void gq_lattice_signs(const float* x, const float* w, int n, bool even_parity, float* xval, gq_u8* signs) {
    for (int g = 0; g < n / 8; ++g) {
        gq_u8 s = 0;
        int nflip = 0;
        for (int k = 0; k < 8; ++k) {
            const int i = 8 * g + k;
            if (!(x[i] >= 0.0f)) {
                xval[i] = -x[i];
                s |= (gq_u8)(1u << k);
                ++nflip;
            } else {
                xval[i] = x[i];
            }
        }
        if (even_parity) {
            if (nflip & 1) {
                int imin = 0;
                float min = w[8 * g] * x[8 * g] * x[8 * g];
                for (int k = 1; k < 8; ++k) {
                    const float ax = w[8 * g + k] * x[8 * g + k] * x[8 * g + k];
                    if (ax < min) {
                        min = ax;
                        imin = k;
                    }
                }
                xval[8 * g + imin] = -xval[8 * g + imin];
                s ^= (gq_u8)(1u << imin);
            }
            s &= 127;
        }
        signs[g] = s;
    }
}

GQ_FN int gq_lattice_code(const GqLattice& lat, const int* levels) {
    int code = 0;
    for (int i = 0; i < lat.dims; ++i) code |= levels[i] << (lat.bits * i);
    return code;
}

// The neighbour of `code` minimizing sum_i w_i (scale q_i - x_i)^2, the first such in list order.
// The first of `count` grid points in `list` minimizing sum_i w_i (sv[l_i] - x_i)^2, sv[l] being the
// scaled value of level index l (computed once: scale * level rounds the same each time). DIMS is a
// constant so that the sums unroll and successive candidates overlap; each sum keeps ggml's order.
template <int DIMS>
GQ_FN int gq_first_nearest(const gq_i32* list, int count, const gq_u8* level_index, const float* x,
                           const float* w, const float* sv) {
    float best_d2 = 3.4028235e38f;
    int best = -1;
    for (int j = 0; j < count; ++j) {
        const int p = list[j];
        const gq_u8* li = level_index + p * DIMS;
        float d2 = 0.0f;
        GQ_UNROLL
        for (int i = 0; i < DIMS; ++i) {
            const float diff = sv[li[i]] - x[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            best = p;
        }
    }
    return best;
}

GQ_FN int gq_lattice_best_neighbour(const GqLattice& lat, int code, const float* x, const float* w, float scale) {
    const gq_i32* list = lat.neighbours + lat.neighbour_start[code];
    const int count = lat.neighbour_count[code];
    float sv[8];  // level index l < 2^bits <= 8: the level 2 l + 1, scaled
    GQ_UNROLL
    for (int l = 0; l < 8; ++l) sv[l] = scale * (float)(2 * l + 1);
    return lat.dims == 8 ? gq_first_nearest<8>(list, count, lat.level_index, x, w, sv)
                         : gq_first_nearest<4>(list, count, lat.level_index, x, w, sv);
}

// Snaps the groups of n weights at inverse scale inv_scale (levels clamped to [0, kmax - 1]);
// a group off the grid takes its best neighbour at `scale` (weights waux). only_off: snap only the
// groups whose on_grid is false (and leave the others). Returns whether every group was on the grid.
GQ_FN bool gq_lattice_snap(const GqLattice& lat, const float* xval, const float* waux, int n, int kmax,
                           float inv_scale, float scale, gq_i32* grid, bool* on_grid, bool only_off) {
    bool all_on = true;
    for (int g = 0; g < n / lat.dims; ++g) {
        if (only_off && on_grid[g]) continue;
        int levels[8];
        for (int i = 0; i < lat.dims; ++i) {
            const int l = gq_nearest_int(0.5f * (inv_scale * xval[g * lat.dims + i] - 1.0f));
            levels[i] = gq_max_i(0, gq_min_i(kmax - 1, l));
        }
        const int code = gq_lattice_code(lat, levels);
        int p = lat.grid_of_code[code];
        const bool on = p >= 0;
        if (!on) {
            p = gq_lattice_best_neighbour(lat, code, xval + g * lat.dims, waux + g * lat.dims, scale);
            all_on = false;
        }
        grid[g] = p;
        on_grid[g] = on;
    }
    return all_on;
}

// sum w x q and sum w q q over the sub-block, q the odd levels of the grid points, in index order.
GQ_FN void gq_lattice_fit(const GqLattice& lat, const float* xval, const float* w, int n, const gq_i32* grid,
                          float* sumqx, float* sumq2) {
    float sx = 0.0f, s2 = 0.0f;
    for (int g = 0; g < n / lat.dims; ++g) {
        const gq_u8* li = lat.level_index + grid[g] * lat.dims;
        for (int i = 0; i < lat.dims; ++i) {
            const int k = g * lat.dims + i;
            const float q = (float)(2 * li[i] + 1);
            sx += w[k] * xval[k] * q;
            s2 += w[k] * q * q;
        }
    }
    *sumqx = sx;
    *sumq2 = s2;
}

// The scale search for one sub-block of n (<= 32) magnitudes with base > 0: trial inverse scales
// (2 kmax - 1 + step step_size) / base for step in [-trial_steps, trial_steps], the best fit kept
// (from initial_scale); then the groups are snapped again at the fitted scale as `refine` says and
// the scale refitted. Writes the grid points; returns the scale.
GQ_FN float gq_lattice_search(const GqLattice& lat, const float* xval, const float* w, int n, float base, int kmax,
                              int trial_steps, float step_size, int refine, float initial_scale, gq_i32* grid) {
    float waux[32];
    for (int i = 0; i < n; ++i) waux[i] = sqrtf(w[i]);
    const int groups = n / lat.dims;
    const float top = (float)(2 * kmax - 1);
    float best = 0.0f;
    float scale = initial_scale;
    bool on_grid[8];
    const int zero_point = lat.grid_of_code[0];
    for (int g = 0; g < groups; ++g) {
        grid[g] = zero_point;
        on_grid[g] = refine != GQ_REFINE_ALL_IF_ANY_OFF;
    }
    for (int step = -trial_steps; step <= trial_steps; ++step) {
        const float inv_scale = (top + (float)step * step_size) / base;
        gq_i32 trial[8];
        bool trial_on[8];
        gq_lattice_snap(lat, xval, waux, n, kmax, inv_scale, 1.0f / inv_scale, trial, trial_on, false);
        float sumqx, sumq2;
        gq_lattice_fit(lat, xval, w, n, trial, &sumqx, &sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            for (int g = 0; g < groups; ++g) {
                grid[g] = trial[g];
                on_grid[g] = trial_on[g];
            }
        }
    }
    bool any_off = false;
    for (int g = 0; g < groups; ++g) any_off = any_off || !on_grid[g];
    if (scale > 0.0f && (refine == GQ_REFINE_ALWAYS_ALL || any_off)) {
        gq_lattice_snap(lat, xval, waux, n, kmax, 1.0f / scale, scale, grid, on_grid, refine == GQ_REFINE_OFF_GRID);
        float sumqx, sumq2;
        gq_lattice_fit(lat, xval, w, n, grid, &sumqx, &sumq2);
        if (sumq2 > 0.0f) scale = sumqx / sumq2;
    }
    return scale;
}

// One sub-block, start to end: signs, magnitudes, activity, search, and a negative scale folded
// into the signs (sign_mask: the stored sign bits). Inactive sub-blocks get scale 0, grid point 0 and
// no signs. Returns the scale.
struct GqLatticeSearch {
    int kmax, trial_steps, refine;
    float step_size, eps;  // active: max magnitude not below eps (eps 0: not equal to 0)
    bool even_parity, start_from_qp;  // start_from_qp: IQ2_XXS's start from make_qp_quants
};

GQ_FN float gq_lattice_sub_block(const GqLattice& lat, const GqLatticeSearch& s, const float* x, const float* w, int n,
                                 gq_i32* grid, gq_u8* signs, bool* is_active = nullptr) {
    float xval[32];
    gq_lattice_signs(x, w, n, s.even_parity, xval, signs);
    float max = xval[0];
    for (int i = 1; i < n; ++i) max = gq_max_f(max, xval[i]);
    bool active = s.eps > 0.0f ? !(max < s.eps) : max != 0.0f;
    float base = max, initial = max / (float)(2 * s.kmax - 1);
    if (active && s.start_from_qp) {
        gq_u8 L[32];
        initial = gq_make_qp_quants<32>(s.kmax + 1, xval, L, w);
        base = initial * 3.0f;
        active = base > 0.0f;
    }
    float scale = 0.0f;
    if (active) {
        scale = gq_lattice_search(lat, xval, w, n, base, s.kmax, s.trial_steps, s.step_size, s.refine, initial, grid);
    }
    const gq_u8 mask = s.even_parity ? 127 : 255;
    const int groups = n / lat.dims;
    if (is_active) *is_active = active;
    if (!active) {
        for (int g = 0; g < groups; ++g) grid[g] = 0;
        for (int k = 0; k < n / 8; ++k) signs[k] = 0;
        return 0.0f;
    }
    if (scale < 0.0f) {
        scale = -scale;
        for (int k = 0; k < n / 8; ++k) signs[k] = (gq_u8)(~signs[k] & mask);
    }
    return scale;
}

// The super-block scale d = max / (2 max_m + 1) and each sub-block's multiplier m (scale ~ d (2m+1)).
// Returns false (d 0) when every scale is 0.
GQ_FN bool gq_lattice_multipliers(const float* scales, int n, int max_m, float* d, int* m) {
    float max = scales[0];
    for (int i = 1; i < n; ++i) max = gq_max_f(max, scales[i]);
    const bool nonzero = max != 0.0f;
    *d = (nonzero ? max : 1.0f) / (float)(2 * max_m + 1);
    const float id = 1.0f / *d;
    for (int i = 0; i < n; ++i) {
        m[i] = gq_max_i(0, gq_min_i(max_m, gq_nearest_int(0.5f * (id * scales[i] - 1.0f))));
    }
    return nonzero;
}

GQ_FN gq_u32 gq_lattice_sign_word(const gq_u8* signs, int m) {
    return (gq_u32)signs[0] | (gq_u32)signs[1] << 7 | (gq_u32)signs[2] << 14 | (gq_u32)signs[3] << 21 |
           (gq_u32)m << 28;
}

#define GQ_IQ3_XXS_BYTES 98
#define GQ_IQ3_S_BYTES 110
#define GQ_IQ2_S_BYTES 82
#define GQ_IQ2_XS_BYTES 74
#define GQ_IQ2_XXS_BYTES 66

GQ_FN void gq_zero_bytes(gq_u8* out, int n) {
    for (int i = 0; i < n; ++i) out[i] = 0;
}

GQ_FN void gq_quantize_block_iq3_xxs(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    const GqLatticeSearch s = {8, 15, GQ_REFINE_OFF_GRID, 0.2f, 1e-8f, true, false};
    float w[256], scales[8];
    gq_i32 grid[64];
    gq_u8 signs[32];
    gq_lattice_weights(x, qw, true, 0.0f, w);
    for (int ib = 0; ib < 8; ++ib) {
        scales[ib] = gq_lattice_sub_block(lat, s, x + 32 * ib, w + 32 * ib, 32, grid + 8 * ib, signs + 4 * ib);
    }
    float d;
    int m[8];
    gq_zero_bytes(out, GQ_IQ3_XXS_BYTES);
    if (!gq_lattice_multipliers(scales, 8, 15, &d, m)) return;
    gq_store_u16(out, gq_fp32_to_fp16(d * 1.0125f));
    for (int i = 0; i < 64; ++i) out[2 + i] = (gq_u8)grid[i];
    for (int ib = 0; ib < 8; ++ib) gq_store_u32(out + 66 + 4 * ib, gq_lattice_sign_word(signs + 4 * ib, m[ib]));
}

GQ_FN void gq_quantize_block_iq3_s(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    const GqLatticeSearch s = {8, 9, GQ_REFINE_ALL_IF_ANY_OFF, 0.2f, 0.0f, false, false};
    float w[256], scales[8];
    gq_i32 grid[64];
    gq_u8 signs[32];
    bool active[8];
    gq_lattice_weights(x, qw, true, 0.0f, w);
    for (int ib = 0; ib < 8; ++ib) {
        scales[ib] = gq_lattice_sub_block(lat, s, x + 32 * ib, w + 32 * ib, 32, grid + 8 * ib, signs + 4 * ib,
                                          &active[ib]);
    }
    float d;
    int m[8];
    gq_zero_bytes(out, GQ_IQ3_S_BYTES);
    const bool nonzero = gq_lattice_multipliers(scales, 8, 15, &d, m);
    // ggml advances its qs and signs pointers only past non-empty sub-blocks: those pack to the
    // front; the high bits keep their sub-block's position.
    int slot = 0;
    for (int ib = 0; ib < 8; ++ib) {
        gq_u8 high = 0;
        for (int k = 0; k < 8; ++k) high |= (gq_u8)(((grid[8 * ib + k] >> 8) & 1) << k);
        out[66 + ib] = high;
        if (!active[ib]) continue;
        for (int k = 0; k < 8; ++k) out[2 + 8 * slot + k] = (gq_u8)(grid[8 * ib + k] & 255);
        for (int k = 0; k < 4; ++k) out[74 + 4 * slot + k] = signs[4 * ib + k];
        ++slot;
    }
    if (!nonzero) return;
    gq_store_u16(out, gq_fp32_to_fp16(d * 1.033f));
    for (int j = 0; j < 4; ++j) out[106 + j] = (gq_u8)(m[2 * j] | m[2 * j + 1] << 4);
}

GQ_FN void gq_quantize_block_iq2_s(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    const GqLatticeSearch s = {3, 9, GQ_REFINE_OFF_GRID, 0.1f, 1e-8f, false, false};
    float w[256], scales[16];
    gq_i32 grid[32];
    gq_u8 signs[32];
    gq_lattice_weights(x, qw, true, 0.25f, w);
    for (int ib = 0; ib < 16; ++ib) {
        scales[ib] = gq_lattice_sub_block(lat, s, x + 16 * ib, w + 16 * ib, 16, grid + 2 * ib, signs + 2 * ib);
    }
    float d;
    int m[16];
    gq_zero_bytes(out, GQ_IQ2_S_BYTES);
    const bool nonzero = gq_lattice_multipliers(scales, 16, 15, &d, m);
    for (int i = 0; i < 32; ++i) out[2 + i] = (gq_u8)(grid[i] & 255);
    for (int i = 0; i < 32; ++i) out[34 + i] = signs[i];
    for (int j = 0; j < 8; ++j) {
        gq_u8 high = 0;
        for (int k = 0; k < 4; ++k) high |= (gq_u8)(((grid[4 * j + k] >> 8) & 3) << (2 * k));
        out[66 + j] = high;
    }
    if (!nonzero) return;
    gq_store_u16(out, gq_fp32_to_fp16(d * 0.9875f));
    for (int j = 0; j < 8; ++j) out[74 + j] = (gq_u8)(m[2 * j] | m[2 * j + 1] << 4);
}

GQ_FN void gq_quantize_block_iq2_xs(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    const GqLatticeSearch s = {3, 9, GQ_REFINE_OFF_GRID, 0.1f, 1e-15f, true, false};
    float w[256], scales[16];
    gq_i32 grid[32];
    gq_u8 signs[32];
    gq_lattice_weights(x, qw, false, 0.0f, w);
    for (int ib = 0; ib < 16; ++ib) {
        scales[ib] = gq_lattice_sub_block(lat, s, x + 16 * ib, w + 16 * ib, 16, grid + 2 * ib, signs + 2 * ib);
    }
    float d;
    int m[16];
    gq_zero_bytes(out, GQ_IQ2_XS_BYTES);
    if (!gq_lattice_multipliers(scales, 16, 15, &d, m)) return;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    for (int i = 0; i < 32; ++i) gq_store_u16(out + 2 + 2 * i, (gq_u16)(grid[i] | (gq_i32)signs[i] << 9));
    for (int j = 0; j < 8; ++j) out[66 + j] = (gq_u8)(m[2 * j] | m[2 * j + 1] << 4);
}

GQ_FN void gq_quantize_block_iq2_xxs(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    const GqLatticeSearch s = {3, 6, GQ_REFINE_ALWAYS_ALL, 0.1f, 1e-15f, true, true};
    float w[256], scales[8];
    gq_i32 grid[32];
    gq_u8 signs[32];
    gq_lattice_weights(x, qw, false, 0.0f, w);
    for (int ib = 0; ib < 8; ++ib) {
        scales[ib] = gq_lattice_sub_block(lat, s, x + 32 * ib, w + 32 * ib, 32, grid + 4 * ib, signs + 4 * ib);
    }
    float d;
    int m[8];
    gq_zero_bytes(out, GQ_IQ2_XXS_BYTES);
    if (!gq_lattice_multipliers(scales, 8, 15, &d, m)) return;
    gq_store_u16(out, gq_fp32_to_fp16(d));
    for (int ib = 0; ib < 8; ++ib) {
        for (int k = 0; k < 4; ++k) out[2 + 8 * ib + k] = (gq_u8)grid[4 * ib + k];
        gq_store_u32(out + 2 + 8 * ib + 4, gq_lattice_sign_word(signs + 4 * ib, m[ib]));
    }
}

// ---------------------------------------------------------------- dequantization

// dims weights of grid point p times db, negated where bit (first + i) of `signs` is set.
GQ_FN void gq_lattice_point_values(const GqLattice& lat, int p, float db, gq_u32 signs, int first, float* y) {
    for (int i = 0; i < lat.dims; ++i) {
        const float v = db * (float)lat.values[p * lat.dims + i];
        y[i] = (signs >> (first + i)) & 1u ? -v : v;
    }
}

GQ_FN void gq_dequantize_block_iq3_xxs(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 8; ++ib) {
        const gq_u32 word = gq_load_u32(in + 66 + 4 * ib);
        const float db = d * (0.5f + (float)(word >> 28)) * 0.5f;
        for (int l = 0; l < 4; ++l) {
            const gq_u32 signs = lat.ksigns[(word >> (7 * l)) & 127u];
            for (int j = 0; j < 2; ++j) {
                gq_lattice_point_values(lat, in[2 + 8 * ib + 2 * l + j], db, signs, 4 * j, y + 32 * ib + 8 * l + 4 * j);
            }
        }
    }
}

GQ_FN void gq_dequantize_block_iq3_s(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 8; ++ib) {
        const int m = (in[106 + ib / 2] >> (4 * (ib % 2))) & 15;
        const float db = d * (float)(1 + 2 * m);
        for (int k = 0; k < 8; ++k) {
            const int p = in[2 + 8 * ib + k] | (((in[66 + ib] >> k) & 1) << 8);
            const gq_u32 signs = in[74 + 4 * ib + k / 2];
            gq_lattice_point_values(lat, p, db, signs, 4 * (k % 2), y + 32 * ib + 4 * k);
        }
    }
}

GQ_FN void gq_dequantize_block_iq2_s(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 16; ++ib) {
        const int m = (in[74 + ib / 2] >> (4 * (ib % 2))) & 15;
        const float db = d * (0.5f + (float)m) * 0.25f;
        for (int k = 0; k < 2; ++k) {
            const int i = 2 * ib + k;
            const int p = in[2 + i] | (((in[66 + i / 4] >> (2 * (i % 4))) & 3) << 8);
            gq_lattice_point_values(lat, p, db, in[34 + i], 0, y + 8 * i);
        }
    }
}

GQ_FN void gq_dequantize_block_iq2_xs(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 16; ++ib) {
        const int m = (in[66 + ib / 2] >> (4 * (ib % 2))) & 15;
        const float db = d * (0.5f + (float)m) * 0.25f;
        for (int k = 0; k < 2; ++k) {
            const int i = 2 * ib + k;
            const int point = gq_load_u16(in + 2 + 2 * i);
            gq_lattice_point_values(lat, point & 511, db, lat.ksigns[point >> 9], 0, y + 8 * i);
        }
    }
}

GQ_FN void gq_dequantize_block_iq2_xxs(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 8; ++ib) {
        const gq_u32 word = gq_load_u32(in + 2 + 8 * ib + 4);
        const float db = d * (0.5f + (float)(word >> 28)) * 0.25f;
        for (int l = 0; l < 4; ++l) {
            const gq_u32 signs = lat.ksigns[(word >> (7 * l)) & 127u];
            gq_lattice_point_values(lat, in[2 + 8 * ib + l], db, signs, 0, y + 32 * ib + 8 * l);
        }
    }
}

// ---------------------------------------------------------------- IQ1_S and IQ1_M

// IQ1's levels -1, 0, 1, moved up (shift +1) or down (shift -1) by 1/8.
#define GQ_IQ1_DELTA 0.125f
#define GQ_IQ1_S_BYTES 50
#define GQ_IQ1_M_BYTES 56

GQ_FN void gq_iq1_values(bool down, float* v) {
    v[0] = down ? -1.0f - GQ_IQ1_DELTA : -1.0f + GQ_IQ1_DELTA;
    v[1] = down ? -GQ_IQ1_DELTA : GQ_IQ1_DELTA;
    v[2] = down ? 1.0f - GQ_IQ1_DELTA : 1.0f + GQ_IQ1_DELTA;
}

// ggml's qsort of n values (glibc's merge sort keeps ties in index order): a stable insertion sort.
GQ_FN void gq_iq1_sort(const float* x, int n, int* order) {
    for (int i = 0; i < n; ++i) {
        int j = i;
        while (j > 0 && x[order[j - 1]] > x[i]) {
            order[j] = order[j - 1];
            --j;
        }
        order[j] = i;
    }
}

// The grid point of an 8-level group with level values v (one shift), snapped as ggml's IQ1 do: on
// the grid, or the neighbour minimizing sum w (scale v[l] - x)^2 (the first such). Sets *off.
GQ_FN int gq_iq1_point(const GqLattice& lat, const int* levels, const float* x, const float* w, float scale,
                       const float* v, bool* off) {
    const int code = gq_lattice_code(lat, levels);
    const int p = lat.grid_of_code[code];
    *off = p < 0;
    if (p >= 0) return p;
    const float sv[3] = {scale * v[0], scale * v[1], scale * v[2]};
    return gq_first_nearest<8>(lat.neighbours + lat.neighbour_start[code], lat.neighbour_count[code],
                               lat.level_index, x, w, sv);
}

// Snaps the n / 8 groups of levels (down[g]: the group's shift) and, where one was off the grid,
// refits the scale to the grid points (kept where the fit is not positive). Returns the scale.
GQ_FN float gq_iq1_snap(const GqLattice& lat, const int* L, const float* x, const float* w, int n, float scale,
                        const bool* down, gq_i32* grid) {
    bool any_off = false;
    for (int g = 0; g < n / 8; ++g) {
        float v[3];
        gq_iq1_values(down[g], v);
        bool off;
        grid[g] = gq_iq1_point(lat, L + 8 * g, x + 8 * g, w + 8 * g, scale, v, &off);
        any_off = any_off || off;
    }
    if (any_off) {
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int g = 0; g < n / 8; ++g) {
            float v[3];
            gq_iq1_values(down[g], v);
            const gq_u8* li = lat.level_index + grid[g] * 8;
            for (int i = 0; i < 8; ++i) {
                const float wq = w[8 * g + i] * v[li[i]];
                sumqx += wq * x[8 * g + i];
                sumq2 += wq * v[li[i]];
            }
        }
        if (sumqx > 0.0f && sumq2 > 0.0f) scale = sumqx / sumq2;
    }
    return scale;
}

// The levels (0, 1, 2 below sorted position i1, below i2, above) of each weight, mirrored where flip.
GQ_FN void gq_iq1_levels(const int* order, int n, int i1, int i2, bool flip, int* L) {
    for (int j = 0; j < n; ++j) {
        const int level = (j >= i1 ? 1 : 0) + (j >= i2 ? 1 : 0);
        L[order[j]] = flip ? 2 - level : level;
    }
}

GQ_FN void gq_quantize_block_iq1_s(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    float w[256], scales[8];
    gq_i32 grid[32];
    int shifts[8];
    gq_lattice_weights(x, qw, true, 0.0f, w);
    for (int ib = 0; ib < 8; ++ib) {
        const float* xb = x + 32 * ib;
        const float* wb = w + 32 * ib;
        float max = fabsf(xb[0]);
        for (int i = 1; i < 32; ++i) max = gq_max_f(max, fabsf(xb[i]));
        scales[ib] = 0.0f;
        shifts[ib] = 1;
        for (int g = 0; g < 4; ++g) grid[4 * ib + g] = 0;
        if (max < 1e-12f) continue;
        int order[32];
        gq_iq1_sort(xb, 32, order);
        float sumx[33], sumw[33];
        sumx[0] = 0.0f;
        sumw[0] = 0.0f;
        for (int j = 0; j < 32; ++j) {
            sumx[j + 1] = sumx[j] + wb[order[j]] * xb[order[j]];
            sumw[j + 1] = sumw[j] + wb[order[j]];
        }
        float best = -3.4028235e38f, scale = 0.0f;
        int besti1 = -1, besti2 = -1, best_shift = 0;
        for (int i1 = 0; i1 <= 32; ++i1) {
            for (int i2 = i1; i2 <= 32; ++i2) {
                const float lx = sumx[i1] - sumx[0], lw = sumw[i1] - sumw[0];
                const float mx = sumx[i2] - sumx[i1], mw = sumw[i2] - sumw[i1];
                const float hx = sumx[32] - sumx[i2], hw = sumw[32] - sumw[i2];
                for (int s = 0; s < 2; ++s) {
                    float v[3];
                    gq_iq1_values(s == 1, v);
                    const float sumqx = lx * v[0] + mx * v[1] + hx * v[2];
                    const float sumq2 = lw * v[0] * v[0] + mw * v[1] * v[1] + hw * v[2] * v[2];
                    if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
                        scale = sumqx / sumq2;
                        best = scale * sumqx;
                        besti1 = i1;
                        besti2 = i2;
                        best_shift = s == 0 ? 1 : -1;
                    }
                }
            }
        }
        if (besti1 < 0 || besti2 < 0 || best_shift == 0) continue;
        const bool flip = scale < 0.0f;
        int L[32];
        gq_iq1_levels(order, 32, besti1, besti2, flip, L);
        if (flip) {
            scale = -scale;
            best_shift = -best_shift;
        }
        bool down[4];
        for (int g = 0; g < 4; ++g) down[g] = best_shift == -1;
        scales[ib] = gq_iq1_snap(lat, L, xb, wb, 32, scale, down, grid + 4 * ib);
        shifts[ib] = best_shift;
    }
    float d;
    int m[8];
    gq_zero_bytes(out, GQ_IQ1_S_BYTES);
    const bool nonzero = gq_lattice_multipliers(scales, 8, 7, &d, m);
    if (nonzero) gq_store_u16(out, gq_fp32_to_fp16(d * 1.125f));
    for (int i = 0; i < 32; ++i) out[2 + i] = (gq_u8)(grid[i] & 255);
    for (int ib = 0; ib < 8; ++ib) {
        gq_u32 high = 0;
        for (int g = 0; g < 4; ++g) high |= (gq_u32)((grid[4 * ib + g] >> 8) & 7) << (3 * g);
        const gq_u32 mult = nonzero ? (gq_u32)m[ib] | (shifts[ib] == -1 ? 8u : 0u) : 0u;
        gq_store_u16(out + 34 + 2 * ib, (gq_u16)(high | mult << 12));
    }
}

GQ_FN void gq_quantize_block_iq1_m(const GqLattice& lat, const float* x, const float* qw, gq_u8* out) {
    float w[256], scales[16];
    gq_i32 grid[32];
    bool down[32];
    gq_lattice_weights(x, qw, true, 0.0f, w);
    float up[3], dn[3];
    gq_iq1_values(false, up);
    gq_iq1_values(true, dn);
    const float p2 = up[2], m2 = dn[2];
    const float cp1 = up[0] * up[0] - up[1] * up[1], cp2 = up[1] * up[1] - up[2] * up[2];
    const float cm1 = dn[0] * dn[0] - dn[1] * dn[1], cm2 = dn[1] * dn[1] - dn[2] * dn[2];
    for (int ib = 0; ib < 16; ++ib) {
        const float* xb = x + 16 * ib;
        const float* wb = w + 16 * ib;
        float max = fabsf(xb[0]);
        for (int i = 1; i < 16; ++i) max = gq_max_f(max, fabsf(xb[i]));
        scales[ib] = 0.0f;
        grid[2 * ib] = grid[2 * ib + 1] = 0;
        down[2 * ib] = down[2 * ib + 1] = false;
        if (max < 1e-7f) continue;
        int order[16];
        gq_iq1_sort(xb, 16, order);
        // prefix sums per group of 8 (each group has its own shift), in sorted order
        float px[2][17], pw[2][17];
        px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0.0f;
        for (int j = 0; j < 16; ++j) {
            const int i = order[j];
            const int h = i < 8 ? 0 : 1;
            px[h][j + 1] = px[h][j] + wb[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + wb[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        float best = -3.4028235e38f, scale = 0.0f;
        int besti1 = -1, besti2 = -1, best_k = -1;
        for (int i1 = 0; i1 <= 16; ++i1) {
            for (int i2 = i1; i2 <= 16; ++i2) {
                float qx_p[2], qx_m[2], q2_p[2], q2_m[2];
                for (int h = 0; h < 2; ++h) {
                    const float sx = px[h][i1] + px[h][i2];
                    qx_p[h] = px[h][16] * p2 - sx;
                    qx_m[h] = px[h][16] * m2 - sx;
                    q2_p[h] = pw[h][16] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = pw[h][16] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                // k: bit 1 shifts the first group down, bit 0 the second
                const float sumqx[4] = {qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1]};
                const float sumq2[4] = {q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1]};
                for (int k = 0; k < 4; ++k) {
                    if (sumq2[k] > 0.0f && sumqx[k] * sumqx[k] > best * sumq2[k]) {
                        scale = sumqx[k] / sumq2[k];
                        best = scale * sumqx[k];
                        besti1 = i1;
                        besti2 = i2;
                        best_k = k;
                    }
                }
            }
        }
        if (besti1 < 0 || besti2 < 0 || best_k < 0) continue;
        const bool flip = scale < 0.0f;
        int L[16];
        gq_iq1_levels(order, 16, besti1, besti2, flip, L);
        if (flip) {
            scale = -scale;
            best_k = 3 - best_k;
        }
        down[2 * ib] = best_k >= 2;
        down[2 * ib + 1] = best_k % 2 == 1;
        scales[ib] = gq_iq1_snap(lat, L, xb, wb, 16, scale, down + 2 * ib, grid + 2 * ib);
    }
    float d;
    int m[16];
    gq_zero_bytes(out, GQ_IQ1_M_BYTES);
    const bool nonzero = gq_lattice_multipliers(scales, 16, 7, &d, m);
    // the super-block scale refitted to every weight at its stored level, in weight order
    float sumqx = 0.0f, sumq2 = 0.0f;
    for (int ib = 0; ib < 16; ++ib) {
        const float odd = (float)(2 * m[ib] + 1);
        for (int g = 0; g < 2; ++g) {
            float v[3];
            gq_iq1_values(down[2 * ib + g], v);
            const gq_u8* li = lat.level_index + grid[2 * ib + g] * 8;
            for (int i = 0; i < 8; ++i) {
                const int k = 16 * ib + 8 * g + i;
                const float q = v[li[i]] * odd;
                const float wq = w[k] * q;
                sumqx += wq * x[k];
                sumq2 += wq * q;
            }
        }
    }
    if (sumq2 > 0.0f) d = sumqx / sumq2;
    const gq_u16 d_bits = gq_fp32_to_fp16(d * 1.1125f);
    for (int i = 0; i < 32; ++i) out[i] = (gq_u8)(grid[i] & 255);
    for (int ib = 0; ib < 16; ++ib) {
        const int s0 = down[2 * ib] && nonzero ? 8 : 0;
        const int s1 = down[2 * ib + 1] && nonzero ? 8 : 0;
        out[32 + ib] = (gq_u8)(((grid[2 * ib] >> 8) | s0) | (((grid[2 * ib + 1] >> 8) | s1) << 4));
    }
    if (!nonzero) return;
    for (int j = 0; j < 4; ++j) {
        gq_u32 sc = 0;
        for (int k = 0; k < 4; ++k) sc |= (gq_u32)m[4 * j + k] << (3 * k);
        sc |= (gq_u32)((d_bits >> (4 * j)) & 15) << 12;
        gq_store_u16(out + 48 + 2 * j, (gq_u16)sc);
    }
}

GQ_FN void gq_dequantize_block_iq1_s(const GqLattice& lat, const gq_u8* in, float* y) {
    const float d = gq_fp16_to_fp32(gq_load_u16(in));
    for (int ib = 0; ib < 8; ++ib) {
        const int qh = gq_load_u16(in + 34 + 2 * ib);
        const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -GQ_IQ1_DELTA : GQ_IQ1_DELTA;
        for (int g = 0; g < 4; ++g) {
            const int p = in[2 + 4 * ib + g] | (((qh >> (3 * g)) & 7) << 8);
            for (int i = 0; i < 8; ++i) {
                y[32 * ib + 8 * g + i] = dl * ((float)(gq_i8)lat.values[8 * p + i] + delta);
            }
        }
    }
}

GQ_FN void gq_dequantize_block_iq1_m(const GqLattice& lat, const gq_u8* in, float* y) {
    gq_u32 sc[4];
    for (int j = 0; j < 4; ++j) sc[j] = gq_load_u16(in + 48 + 2 * j);
    const gq_u16 d_bits = (gq_u16)((sc[0] >> 12) | ((sc[1] >> 12) << 4) | ((sc[2] >> 12) << 8) | ((sc[3] >> 12) << 12));
    const float d = gq_fp16_to_fp32(d_bits);
    for (int ib = 0; ib < 16; ++ib) {
        const float dl = d * (float)(2 * ((sc[ib / 4] >> (3 * (ib % 4))) & 7) + 1);
        for (int g = 0; g < 2; ++g) {
            const int nibble = (in[32 + ib] >> (4 * g)) & 15;
            const int p = in[2 * ib + g] | ((nibble & 7) << 8);
            const float delta = nibble & 8 ? -GQ_IQ1_DELTA : GQ_IQ1_DELTA;
            for (int i = 0; i < 8; ++i) {
                y[16 * ib + 8 * g + i] = dl * ((float)(gq_i8)lat.values[8 * p + i] + delta);
            }
        }
    }
}
