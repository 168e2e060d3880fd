// A CPU emulator for the subset of CUDA that kernels/*.cu use, so that the kernels themselves
// (not only their CPU fallbacks) run in the tests on a machine without a GPU
// (tests/kernel_emu.rs, through kernels/emu/harness.cpp).
//
// Every GPU thread of a block is a fiber (ucontext) on one OS thread; blocks run one after
// another. A fiber runs until it reaches a barrier, then yields:
//   __syncthreads        waits for every live thread of the block;
//   __shfl_xor_sync, mma.sync.m16n8k16, ldmatrix.x4.trans
//                        are warp collectives: each lane leaves its operands in the warp's
//                        slots, waits for all 32 lanes, computes its own result from the slots
//                        (register layouts of the PTX ISA, "Matrix Fragments for
//                        mma.m16n8k16" and "ldmatrix"), and waits again before the slots are
//                        reused.
// It stops with a message (exit code 70) where the hardware would trap or where the kernel is
// wrong in a way a GPU may not show at once: a warp collective with fewer than 32 live lanes or
// with lanes in different collectives, a deadlocked barrier, ldmatrix rows outside the dynamic
// shared memory or not 16-byte aligned, __trap(). Buffers given to a launch end at a guard page
// (kernels/emu/harness.cpp), so reading past one ends with a segmentation fault report.
//
// bf16 and f16 convert with round-to-nearest-even like __float2bfloat16/__float2half; the
// tensor-core product sums in f32 (the hardware's order and internal precision differ: results
// agree to f32 rounding, not bitwise).
#pragma once

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#define LORA_TRAIN_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

using std::max;
using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ---- bf16 and f16 ----

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;  // x in the low half of the 32-bit word
};
inline float __bfloat162float(__nv_bfloat16 v) {
    const uint32_t u = (uint32_t)v.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16(lo), __float2bfloat16(hi)};
}

struct __half {
    _Float16 v;
};
struct __half2 {
    __half x, y;
};
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half(float f) { return __half{(_Float16)f}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half(lo), __float2half(hi)}; }

static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2, "16-bit floats");
static_assert(sizeof(__nv_bfloat162) == 4 && sizeof(__half2) == 4, "packed pairs");

namespace emu {

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

constexpr int WARP = 32;

enum class Op { None, Shfl, Mma, Ldsm };

struct Slot {
    Op op;
    uint32_t u[6];
    float f[4];
    const void* p;
};

struct Warp {
    int live = 0, arrived = 0;
    uint64_t gen = 0;
    Slot slots[WARP];
};

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int linear = 0;
    bool done = false;
    void* stack = nullptr;
};

constexpr size_t STACK = 256 * 1024;

struct State {
    dim3 grid, block, bid;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Fiber* cur = nullptr;
    ucontext_t sched;
    int block_live = 0, block_arrived = 0;
    uint64_t block_gen = 0;
    uint64_t progress = 0;
    unsigned char* smem = nullptr;
    size_t smem_size = 0;
    unsigned char* smem_region = nullptr;
    size_t smem_region_size = 0;
    std::function<void()> body;
    const char* kernel = "";
};

inline State S;

inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kernel emulator: %s: ", S.kernel);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (S.cur)
        fprintf(stderr, " (block %u,%u,%u thread %d)", S.bid.x, S.bid.y, S.bid.z, S.cur->linear);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(70);
}

inline int lane() { return S.cur->linear % WARP; }
inline Warp& warp() { return S.warps[S.cur->linear / WARP]; }

inline void yield() { swapcontext(&S.cur->ctx, &S.sched); }

// Arrives at a barrier of `live` threads and waits until the last one arrives (or, for a block
// barrier, until the others return: thread_exit releases it then).
inline void wait_all(int& arrived, int live, uint64_t& gen) {
    const uint64_t g = gen;
    ++S.progress;
    if (++arrived == live) {
        arrived = 0;
        ++gen;
        return;
    }
    while (gen == g) yield();
}

inline void block_barrier() { wait_all(S.block_arrived, S.block_live, S.block_gen); }

inline void warp_barrier() {
    Warp& w = warp();
    if (w.live != WARP) fail("a warp collective with %d of %d lanes live", w.live, WARP);
    wait_all(w.arrived, w.live, w.gen);
}

// Phase one of a collective: leave this lane's operands, wait for the whole warp, and check that
// every lane is in the same collective.
inline Slot* gather(Op op, const Slot& mine) {
    Warp& w = warp();
    w.slots[lane()] = mine;
    w.slots[lane()].op = op;
    warp_barrier();
    for (int l = 0; l < WARP; ++l)
        if (w.slots[l].op != op) fail("lanes %d and %d are in different warp collectives", lane(), l);
    return w.slots;
}

// Phase two: nobody overwrites the slots before every lane has read them.
inline void release() { warp_barrier(); }

inline void check_full_mask(unsigned mask) {
    if (mask != 0xffffffffu) fail("warp collective with mask %#x (the emulator supports full warps)", mask);
}

inline float shfl_xor(unsigned mask, float v, int offset) {
    check_full_mask(mask);
    if (offset < 0 || offset >= WARP) fail("__shfl_xor_sync offset %d", offset);
    Slot s{};
    s.f[0] = v;
    const Slot* all = gather(Op::Shfl, s);
    const float r = all[lane() ^ offset].f[0];
    release();
    return r;
}

inline float half_to_f(uint32_t reg, int hi, bool bf16) {
    const uint16_t bits = (uint16_t)(hi ? reg >> 16 : reg & 0xffffu);
    if (bf16) return __bfloat162float(__nv_bfloat16{bits});
    __half h;
    memcpy(&h, &bits, 2);
    return __half2float(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c with d = c in
// place. For lane = 4 g + t: A (16 x 16) a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
// a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]; B (16 x 8) b0 = B[2t, 2t+1][g],
// b1 = B[2t+8, 2t+9][g]; C (16 x 8) c[0..1] = C[g][2t, 2t+1], c[2..3] = C[g+8][2t, 2t+1]; the
// lower index of a pair in the low 16 bits.
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
    Slot s{};
    for (int i = 0; i < 4; ++i) s.u[i] = a[i];
    s.u[4] = b0;
    s.u[5] = b1;
    const Slot* all = gather(Op::Mma, s);
    const int g = lane() >> 2, t = lane() & 3;
    auto A = [&](int r, int k) {
        const Slot& src = all[(r % 8) * 4 + (k % 8) / 2];
        return half_to_f(src.u[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k & 1, bf16);
    };
    auto B = [&](int k, int n) {
        const Slot& src = all[n * 4 + (k % 8) / 2];
        return half_to_f(src.u[k >= 8 ? 5 : 4], k & 1, bf16);
    };
    float d[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        d[i] = acc;
    }
    release();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane 8 m + r gives the address of row r of
// matrix m; register m of lane 4 g + t receives rows 2t and 2t+1 of column g of matrix m.
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < S.smem || q + 16 > S.smem + S.smem_size)
        fail("ldmatrix row address %p outside the %zu bytes of dynamic shared memory", p, S.smem_size);
    if ((q - S.smem) % 16 != 0) fail("ldmatrix row address %p not 16-byte aligned", p);
    Slot s{};
    s.p = p;
    const Slot* all = gather(Op::Ldsm, s);
    const int g = lane() >> 2, t = lane() & 3;
    for (int m = 0; m < 4; ++m) {
        const uint16_t lo = static_cast<const uint16_t*>(all[8 * m + 2 * t].p)[g];
        const uint16_t hi = static_cast<const uint16_t*>(all[8 * m + 2 * t + 1].p)[g];
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    release();
}

inline void thread_exit() {
    Fiber* f = S.cur;
    f->done = true;
    ++S.progress;
    --S.block_live;
    if (S.block_arrived > 0 && S.block_arrived == S.block_live) {
        S.block_arrived = 0;
        ++S.block_gen;
    }
    Warp& w = warp();
    // A full-mask collective needs every lane: leaving while others wait in one is a bug.
    if (w.arrived > 0) fail("a lane returned while %d lanes of its warp wait in a collective", w.arrived);
    --w.live;
}

inline void entry() {
    S.body();
    thread_exit();
    // Returning switches to uc_link, the scheduler.
}

inline unsigned char* map_region(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap of %zu bytes failed", bytes);
    return static_cast<unsigned char*>(p);
}

// Dynamic shared memory of `bytes`, ending at a guard page, filled with a pattern so that
// reading what no thread wrote gives large values rather than zeros.
inline void set_dynamic_smem(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 15) / 16 * 16;
    const size_t need = (rounded + page - 1) / page * page + page;
    if (need > S.smem_region_size) {
        if (S.smem_region) munmap(S.smem_region, S.smem_region_size);
        S.smem_region = map_region(need);
        S.smem_region_size = need;
        mprotect(S.smem_region + need - page, page, PROT_NONE);
    }
    S.smem = S.smem_region + S.smem_region_size - page - rounded;
    S.smem_size = bytes;
}

// Runs `body` as every thread of every block of the grid.
inline void launch(const char* kernel, dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
    S.kernel = kernel;
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024) fail("%d threads per block", n);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("empty grid");
    if (grid.y > 65535 || grid.z > 65535) fail("grid %u x %u x %u exceeds CUDA's limits", grid.x, grid.y, grid.z);
    S.grid = grid;
    S.block = block;
    S.body = std::move(body);
    set_dynamic_smem(smem);
    S.fibers.resize(n);
    for (auto& f : S.fibers)
        if (!f.stack) f.stack = map_region(STACK);
    S.warps.assign((n + WARP - 1) / WARP, Warp{});
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                S.bid = dim3{bx, by, bz};
                S.block_live = n;
                S.block_arrived = 0;
                memset(S.smem, 0xcd, S.smem_size);
                for (int i = 0; i < (int)S.warps.size(); ++i) {
                    S.warps[i].live = std::min(WARP, n - i * WARP);
                    S.warps[i].arrived = 0;
                }
                for (int i = 0; i < n; ++i) {
                    Fiber& f = S.fibers[i];
                    f.linear = i;
                    f.tid = dim3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
                    f.done = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK;
                    f.ctx.uc_link = &S.sched;
                    makecontext(&f.ctx, entry, 0);
                }
                int left = n;
                while (left > 0) {
                    const uint64_t before = S.progress;
                    for (auto& f : S.fibers) {
                        if (f.done) continue;
                        S.cur = &f;
                        swapcontext(&S.sched, &f.ctx);
                        S.cur = nullptr;
                        if (f.done) --left;
                    }
                    if (left > 0 && S.progress == before) {
                        S.cur = nullptr;
                        fail("deadlock: %d threads wait at barriers that the others never reach", left);
                    }
                }
            }
    S.kernel = "";
}

}  // namespace emu

#define threadIdx (::emu::S.cur->tid)
#define blockIdx (::emu::S.bid)
#define blockDim (::emu::S.block)
#define gridDim (::emu::S.grid)

inline void __syncthreads() { emu::block_barrier(); }
inline float __shfl_xor_sync(unsigned mask, float v, int offset) { return emu::shfl_xor(mask, v, offset); }
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
[[noreturn]] inline void __trap() { emu::fail("__trap()"); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
// IEEE round-to-nearest arithmetic (no contraction into fused multiply-adds).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
