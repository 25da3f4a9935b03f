// The CUDA simulator's runtime: runs one kernel launch on the CPU.
//
// Blocks are spread over worker threads (each takes the next block index from a shared counter).
// Within a block, every CUDA thread is a fiber (ucontext) with its own stack; the worker runs the
// ready fibers one after another, each until it finishes or waits at a barrier (__syncthreads,
// __syncwarp, or one of the two barriers inside __shfl_sync), then releases the barriers that every
// named thread has reached and runs the fibers again. A barrier that can never complete (a thread
// exited, a mask names a lane that is not waiting) stops the launch with an error, where a GPU
// would hang or compute garbage.
//
// `reverse` runs the fibers, and the blocks, in the opposite order. The Python side launches every
// kernel both ways and compares all device memory the kernel can reach: a race or a missing
// barrier then shows up as different bytes.
#include "cuda_sim.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gqsim {

thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

namespace {

typedef void (*KernelEntry)(void** args);

// Each fiber's stack. The kernels keep their per-thread arrays there (a few KB, more in an
// unoptimized build); a guard page below each stack turns an overflow into a fault, not corruption.
const size_t kStackBytes = 512 * 1024;

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    ucontext_t context;
    State state = State::Ready;
    unsigned int wait_mask = 0;
    uint3 index{0, 0, 0};
    int lane = 0;
    int warp = 0;
};

std::string format(const char* fmt, unsigned a = 0, unsigned b = 0, unsigned c = 0, unsigned d = 0) {
    char buffer[512];
    snprintf(buffer, sizeof buffer, fmt, a, b, c, d);
    return buffer;
}

class BlockRunner {
   public:
    BlockRunner(KernelEntry entry, void** args, dim3 block, bool reverse)
        : entry_(entry), args_(args), block_(block), reverse_(reverse) {
        n_ = (int)(block.x * block.y * block.z);
        fibers_.resize(n_);
        slots_.resize(n_);
        page_ = (size_t)sysconf(_SC_PAGESIZE);
        const size_t total = (kStackBytes + page_) * (size_t)n_;
        void* region = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                            -1, 0);
        if (region == MAP_FAILED) {
            error_ = "could not map the fibers' stacks";
            return;
        }
        region_ = (char*)region;
        region_bytes_ = total;
        for (int i = 0; i < n_; ++i) mprotect(region_ + i * (kStackBytes + page_), page_, PROT_NONE);
    }

    ~BlockRunner() {
        if (region_) munmap(region_, region_bytes_);
    }

    const std::string& error() const { return error_; }

    // Runs block `index` to completion; false (with error()) when the kernel misused a barrier.
    bool run(uint3 index) {
        if (!region_) return false;
        block_idx = index;
        for (int i = 0; i < n_; ++i) {
            Fiber& f = fibers_[i];
            f.state = State::Ready;
            f.wait_mask = 0;
            f.index = uint3{(unsigned)i % block_.x, ((unsigned)i / block_.x) % block_.y,
                            (unsigned)i / (block_.x * block_.y)};
            f.lane = i % 32;
            f.warp = i / 32;
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = region_ + i * (kStackBytes + page_) + page_;
            f.context.uc_stack.ss_size = kStackBytes;
            f.context.uc_link = nullptr;
            makecontext(&f.context, &BlockRunner::fiber_main, 0);
        }
        for (;;) {
            for (int k = 0; k < n_; ++k) {
                const int i = reverse_ ? n_ - 1 - k : k;
                Fiber& f = fibers_[i];
                if (f.state != State::Ready) continue;
                current_ = &f;
                thread_idx = f.index;
                swapcontext(&scheduler_, &f.context);
                current_ = nullptr;
                if (failed_) return false;
            }
            bool all_done = true;
            for (const Fiber& f : fibers_) all_done = all_done && f.state == State::Done;
            if (all_done) return true;
            if (!release_barriers()) return false;
        }
    }

    // ---- called from the running fiber

    void sync_threads() {
        current_->state = State::AtBlockBarrier;
        yield();
    }

    void sync_warp(unsigned int mask) {
        check_own_lane(mask, "__syncwarp");
        wait_warp(mask);
    }

    unsigned long long shuffle(unsigned int mask, unsigned long long bits, int src_lane, int width) {
        Fiber* f = current_;
        if (width < 1 || width > 32 || (width & (width - 1)) != 0)
            fail(format("__shfl_sync: width %d is not a power of two from 1 to 32", (unsigned)width));
        check_own_lane(mask, "__shfl_sync");
        const int linear = f->warp * 32 + f->lane;
        slots_[linear] = bits;
        wait_warp(mask);  // every lane of the mask has put its value
        const int source = (f->lane & ~(width - 1)) + (src_lane & (width - 1));
        if (((mask >> source) & 1u) == 0)
            fail(format("__shfl_sync: lane %u reads lane %u, which mask 0x%08x does not name (undefined in CUDA)",
                        (unsigned)f->lane, (unsigned)source, mask));
        const unsigned long long value = slots_[f->warp * 32 + source];
        wait_warp(mask);  // every lane has read before any lane's next shuffle overwrites its slot
        return value;
    }

   private:
    static void fiber_main();

    void yield() { swapcontext(&current_->context, &scheduler_); }

    [[noreturn]] void fail(const std::string& message) {
        if (!failed_) {
            failed_ = true;
            error_ = format("thread (%u,%u,%u): ", current_->index.x, current_->index.y, current_->index.z) + message;
        }
        yield();  // the scheduler never resumes a failed block
        __builtin_unreachable();
    }

    void check_own_lane(unsigned int mask, const char* what) {
        if (((mask >> current_->lane) & 1u) == 0)
            fail(std::string(what) + format(" called by lane %u, which its mask 0x%08x does not name",
                                             (unsigned)current_->lane, mask));
    }

    void wait_warp(unsigned int mask) {
        current_->state = State::AtWarpBarrier;
        current_->wait_mask = mask;
        yield();
    }

    // Releases every barrier all of whose threads wait at it; false with an error when none can be.
    bool release_barriers() {
        bool released = false;
        for (int i = 0; i < n_; ++i) {
            Fiber& f = fibers_[i];
            if (f.state != State::AtWarpBarrier) continue;
            const unsigned int mask = f.wait_mask;
            bool complete = true;
            for (int lane = 0; lane < 32; ++lane) {
                if (((mask >> lane) & 1u) == 0) continue;
                const int j = f.warp * 32 + lane;
                if (j >= n_) {
                    error_ = format("warp %u: mask 0x%08x names lane %u, which this block of %u threads does not have",
                                    (unsigned)f.warp, mask, (unsigned)lane, (unsigned)n_);
                    failed_ = true;
                    return false;
                }
                const Fiber& g = fibers_[j];
                if (g.state == State::Done) {
                    error_ = format("warp %u: a barrier or shuffle with mask 0x%08x waits for lane %u, which has "
                                    "exited", (unsigned)f.warp, mask, (unsigned)lane);
                    failed_ = true;
                    return false;
                }
                if (g.state != State::AtWarpBarrier || g.wait_mask != mask) complete = false;
            }
            if (!complete) continue;
            for (int lane = 0; lane < 32; ++lane)
                if ((mask >> lane) & 1u) fibers_[f.warp * 32 + lane].state = State::Ready;
            released = true;
        }
        int waiting = 0, live = 0, done = 0;
        for (const Fiber& f : fibers_) {
            waiting += f.state == State::AtBlockBarrier;
            live += f.state != State::Done;
            done += f.state == State::Done;
        }
        if (waiting > 0 && waiting == live) {
            if (done > 0) {
                error_ = format("__syncthreads reached by %u of the block's %u threads; the other %u have exited",
                                (unsigned)waiting, (unsigned)n_, (unsigned)done);
                failed_ = true;
                return false;
            }
            for (Fiber& f : fibers_) f.state = State::Ready;
            released = true;
        }
        if (!released) {
            error_ = describe_deadlock();
            failed_ = true;
        }
        return released;
    }

    std::string describe_deadlock() const {
        std::string text = "deadlock: no barrier can complete;";
        int shown = 0;
        for (const Fiber& f : fibers_) {
            if (f.state == State::Ready || f.state == State::Done || shown == 4) continue;
            text += format(" thread %u at ", f.index.x);
            text += f.state == State::AtBlockBarrier ? std::string("__syncthreads")
                                                     : format("a warp barrier (mask 0x%08x)", f.wait_mask);
            text += ";";
            ++shown;
        }
        return text;
    }

    KernelEntry entry_;
    void** args_;
    dim3 block_;
    bool reverse_;
    int n_ = 0;
    size_t page_ = 4096;
    char* region_ = nullptr;
    size_t region_bytes_ = 0;
    std::vector<Fiber> fibers_;
    std::vector<unsigned long long> slots_;  // __shfl_sync values, one per thread
    ucontext_t scheduler_;
    Fiber* current_ = nullptr;
    bool failed_ = false;
    std::string error_;
};

thread_local BlockRunner* runner = nullptr;

void BlockRunner::fiber_main() {
    BlockRunner* self = runner;
    self->entry_(self->args_);
    self->current_->state = State::Done;
    swapcontext(&self->current_->context, &self->scheduler_);  // never resumed
}

}  // namespace

void sync_threads() { runner->sync_threads(); }
void sync_warp(unsigned int mask) { runner->sync_warp(mask); }
unsigned long long shuffle(unsigned int mask, unsigned long long bits, int src_lane, int width) {
    return runner->shuffle(mask, bits, src_lane, width);
}

}  // namespace gqsim

extern "C" {

// Runs the kernel behind `entry` (a generated trampoline that unpacks `args`, as cuLaunchKernel's
// kernelParams) over grid x block threads on `workers` CPU threads. 0 on success; otherwise 1 and
// the first failure, with its block, in error.
int gqsim_launch(void (*entry)(void**), const unsigned int* grid, const unsigned int* block, void** args,
                 int workers, int reverse, char* error, int error_bytes) {
    const dim3 grid3{grid[0], grid[1], grid[2]};
    const dim3 block3{block[0], block[1], block[2]};
    const long long n_blocks = (long long)grid3.x * grid3.y * grid3.z;
    if (workers < 1) workers = 1;
    if ((long long)workers > n_blocks) workers = (int)n_blocks;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex lock;
    std::string first_error;

    auto work = [&]() {
        gqsim::BlockRunner runner_here(entry, args, block3, reverse != 0);
        gqsim::runner = &runner_here;
        gqsim::grid_dim = grid3;
        gqsim::block_dim = block3;
        while (!failed.load()) {
            const long long k = next.fetch_add(1);
            if (k >= n_blocks) break;
            const long long b = reverse ? n_blocks - 1 - k : k;
            const uint3 index{(unsigned)(b % grid3.x), (unsigned)((b / grid3.x) % grid3.y),
                              (unsigned)(b / ((long long)grid3.x * grid3.y))};
            if (!runner_here.run(index)) {
                std::lock_guard<std::mutex> guard(lock);
                if (!failed.load()) {
                    first_error = gqsim::format("block (%u,%u,%u): ", index.x, index.y, index.z) + runner_here.error();
                    failed.store(true);
                }
                break;
            }
        }
        gqsim::runner = nullptr;
    };
    std::vector<std::thread> threads;
    for (int i = 1; i < workers; ++i) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();
    if (failed.load()) {
        snprintf(error, (size_t)error_bytes, "%s", first_error.c_str());
        return 1;
    }
    return 0;
}

}  // extern "C"
