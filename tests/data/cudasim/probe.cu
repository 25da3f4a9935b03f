// Small kernels that probe the CUDA simulator's semantics (tests/test_cudasim.py). Each is written
// as it would be for a GPU; the comments say what CUDA defines and what the test expects.

extern "C" {

// out[i] = the thread's global index, with 3-D blocks and grids: x fastest, then y, then z.
__global__ void where_am_i(int* out, long long n) {
    const long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    const long long thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const long long i = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
    if (i < n) out[i] = (int)(blockIdx.x * 1000000 + blockIdx.y * 10000 + threadIdx.x * 100 + threadIdx.y * 10 +
                              threadIdx.z);
}

// out[lane] = __shfl_sync(full, lane * 10, src, width), for one warp.
__global__ void shuffle(int* out, int src, int width) {
    const int lane = threadIdx.x;
    out[lane] = __shfl_sync(0xFFFFFFFFu, lane * 10, src, width);
}

// Each block sums its 128 values through shared memory, a tree with a barrier per level; out gets
// one sum per block. `with_barriers` == 0 drops the barriers: a race.
__global__ void block_sum(const float* x, float* out, int with_barriers) {
    __shared__ float partial[128];
    const int t = threadIdx.x;
    partial[t] = x[blockIdx.x * 128 + t];
    if (with_barriers) __syncthreads();
    for (int stride = 64; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        if (with_barriers) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// Each block writes its index into shared memory, waits, and reads it back: blocks that run at the
// same time on different CPU threads must not see each other's shared memory.
__global__ void shared_is_per_block(int* out) {
    __shared__ int mine;
    if (threadIdx.x == 0) mine = (int)blockIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = mine;
}

// Threads past `active` return before a __syncthreads the others reach (undefined in CUDA).
__global__ void early_exit_then_barrier(int* out, int active) {
    if ((int)threadIdx.x >= active) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Lanes past `active` return; the others shuffle with a full mask (undefined: the mask names exited lanes).
__global__ void shuffle_with_exited_lanes(int* out, int active) {
    if ((int)threadIdx.x >= active) return;
    out[threadIdx.x] = __shfl_sync(0xFFFFFFFFu, (int)threadIdx.x, 0, 32);
}

// Every lane calls __syncwarp with a mask that leaves out its own lane.
__global__ void syncwarp_without_own_lane(int* out) {
    __syncwarp(~(1u << threadIdx.x));
    out[threadIdx.x] = 1;
}

// Shuffles among lanes 0..15 with mask 0x0000FFFF; reading lane 16 is outside the mask.
__global__ void shuffle_outside_mask(int* out, int src) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000FFFFu, (int)threadIdx.x, src, 32);
}

// Writes n + extra elements of an n-element array.
__global__ void write_past_the_end(float* y, long long n, long long extra) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n + extra) y[i] = 1.0f;
}

// Writes through a pointer declared const (a cast away from const: undefined behaviour in CUDA).
__global__ void write_through_const(const float* x) { const_cast<float*>(x)[threadIdx.x] = 2.0f; }

// The bit intrinsics the kernels' device branches call.
__global__ void intrinsics(const float* f, const int* v, unsigned int* bits, int* clz, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    bits[i] = __float_as_uint(f[i]);
    clz[i] = __clz(v[i]);
    if (__uint_as_float(bits[i]) != f[i] && f[i] == f[i]) clz[i] = -1;
}

// Scalars of each width and kind, copied out as they arrive.
__global__ void scalars(long long* out64, int* out32, float* outf, long long a, int b, float c) {
    out64[0] = a;
    out32[0] = b;
    outf[0] = c;
}

}  // extern "C"

// A kernel with C++ linkage: its name is mangled, so a GPU's loader cannot find it by name.
__global__ void mangled_kernel(int* out) { out[0] = 1; }
