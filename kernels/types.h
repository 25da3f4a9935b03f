// Generated from gpuquant/qtypes.py (`python -m gpuquant.qtypes`): do not edit; a test holds it
// equal to the table. GQ_FOR_EACH_TYPE(X) calls X(NAME, ggml id, weights per block, bytes per
// block, family, kernel stem) for every type that has kernels (all but F32, a plain copy).
#pragma once

#define GQ_FOR_EACH_TYPE(X) \
    X(F16, 1, 1, 2, floats, f16) \
    X(BF16, 30, 1, 2, floats, bf16) \
    X(Q4_0, 2, 32, 18, legacy, q4_0) \
    X(Q4_1, 3, 32, 20, legacy, q4_1) \
    X(Q5_0, 6, 32, 22, legacy, q5_0) \
    X(Q5_1, 7, 32, 24, legacy, q5_1) \
    X(Q8_0, 8, 32, 34, legacy, q8_0) \
    X(Q2_K, 10, 256, 84, kquants, q2_k) \
    X(Q3_K, 11, 256, 110, kquants, q3_k) \
    X(Q4_K, 12, 256, 144, kquants, q4_k) \
    X(Q5_K, 13, 256, 176, kquants, q5_k) \
    X(Q6_K, 14, 256, 210, kquants, q6_k) \
    X(IQ2_XXS, 16, 256, 66, lattice, iq2_xxs) \
    X(IQ2_XS, 17, 256, 74, lattice, iq2_xs) \
    X(IQ3_XXS, 18, 256, 98, lattice, iq3_xxs) \
    X(IQ1_S, 19, 256, 50, lattice, iq1_s) \
    X(IQ4_NL, 20, 32, 18, iq4, iq4_nl) \
    X(IQ3_S, 21, 256, 110, lattice, iq3_s) \
    X(IQ2_S, 22, 256, 82, lattice, iq2_s) \
    X(IQ4_XS, 23, 256, 136, iq4, iq4_xs) \
    X(IQ1_M, 29, 256, 56, lattice, iq1_m) \
    X(TQ1_0, 34, 256, 54, ternary, tq1_0) \
    X(TQ2_0, 35, 256, 66, ternary, tq2_0) \
    X(MXFP4, 39, 32, 17, fp4, mxfp4) \
    X(NVFP4, 40, 64, 36, fp4, nvfp4) \
    X(Q1_0, 41, 128, 18, lowbit, q1_0) \
    X(Q2_0, 42, 64, 18, lowbit, q2_0)

// GQ_<NAME>: the ggml type id, for the host build's dispatch.
#define GQ_TYPE_ID_ENUMERATOR(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) GQ_##NAME = ID,
enum GqTypeId { GQ_FOR_EACH_TYPE(GQ_TYPE_ID_ENUMERATOR) };
#undef GQ_TYPE_ID_ENUMERATOR
