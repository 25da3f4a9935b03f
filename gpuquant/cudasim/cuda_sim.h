// The CUDA device surface that kernels/*.cu use, for the host C++ compiler: the CUDA simulator's
// header. A simulator build compiles a .cu file with __CUDACC__ defined after this header, so the
// kernels' device branches (#if defined(__CUDACC__)) are the ones that run.
//
// Each CUDA block runs on one CPU thread; its CUDA threads are fibers of that thread (see
// cuda_sim.cpp), switched only at barriers and shuffles. So:
// - threadIdx and friends are the running fiber's, kept in thread_local variables that the
//   scheduler sets before it switches to a fiber;
// - __shared__ variables are static thread_local: one copy per CPU thread, which runs one CUDA
//   block at a time, so each block has its own;
// - __syncthreads, __syncwarp and __shfl_sync are real barriers among the block's (or warp's)
//   fibers, with CUDA's masks and widths checked: a misuse stops the launch with an error.
// Add any intrinsic a kernel starts to use here, as CUDA's documentation defines it: a missing one
// is a compile error of the simulator build, never a silent host fallback.
#pragma once

#include <math.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace gqsim {
extern thread_local uint3 thread_idx;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;

void sync_threads();
void sync_warp(unsigned int mask);
unsigned long long shuffle(unsigned int mask, unsigned long long bits, int src_lane, int width);
}  // namespace gqsim

#define threadIdx (::gqsim::thread_idx)
#define blockIdx (::gqsim::block_idx)
#define blockDim (::gqsim::block_dim)
#define gridDim (::gqsim::grid_dim)
#define warpSize 32

inline void __syncthreads() { ::gqsim::sync_threads(); }
inline void __syncwarp(unsigned int mask = 0xFFFFFFFFu) { ::gqsim::sync_warp(mask); }

// T __shfl_sync(mask, var, srcLane, width): the var of lane (own lane & ~(width - 1)) + srcLane %
// width; every lane named in mask must call it with the same mask, and width is a power of two <= 32.
template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = 32) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "__shfl_sync moves at most 64 bits");
    unsigned long long bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = ::gqsim::shuffle(mask, bits, src_lane, width);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, sizeof i);
    return i;
}
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
// The number of leading zero bits of x as a 32-bit word: 32 for 0.
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
// The position (1-based) of the least significant set bit, 0 for 0.
inline int __ffs(int x) { return __builtin_ffs(x); }
