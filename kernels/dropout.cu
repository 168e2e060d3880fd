// Inverted dropout from a counter-based hash (see src/kernels/dropout.rs): element i of x is kept
// when the top 32 bits of splitmix64(key + (i + 1)·golden) are below `threshold`
// (keep · 2^32), and scaled by `scale` (1/keep rounded to T, as the unfused path's mask tensor
// holds it). The same key masks the forward input and the backward gradient alike, with no
// mask kept in between, and the CPU draws the same mask. Key and threshold are
// 64-bit (size_t) arguments.
#include "common.cuh"

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void dropout(const T* x, T* y, size_t n, size_t key, size_t threshold, float scale) {
    const float s = round_to<T>(scale);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const unsigned long long h = mix64((unsigned long long)key + (i + 1) * 0x9E3779B97F4A7C15ull);
        // A product with 0 too, as the unfused mask product (keeps -0 and NaN alike).
        y[i] = from_f<T>(to_f(x[i]) * ((h >> 32) < threshold ? s : 0.f));
    }
}

#define DROPOUT(T, S)                                                                              \
    extern "C" __global__ void dropout_##S(const T* x, T* y, size_t n, size_t key, size_t threshold, \
                                           float scale) {                                          \
        dropout<T>(x, y, n, key, threshold, scale);                                                \
    }
FOR_EACH_DTYPE(DROPOUT)
