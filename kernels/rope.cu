// Rotary position embedding in the HF half-split layout, forward and backward
// (see src/kernels/rope.rs). x is any 4-D view [B, H, T, D] given by its strides; cos and sin
// are contiguous [T, D]; the result is contiguous [B, H, T, D]. With h = D / 2:
//   forward:  y[d] = x[d] cos[d] - x[d+h] sin[d]      (d < h)
//             y[d] = x[d] cos[d] + x[d-h] sin[d]      (d >= h)
//   backward: dx[d] = g[d] cos[d] + g[d+h] sin[d+h]   (d < h)
//             dx[d] = g[d] cos[d] - g[d-h] sin[d-h]   (d >= h)
// Products are summed in f32 and rounded once.
#include "common.cuh"

template <typename T>
__device__ void rope(const T* x, const T* cos, const T* sin, T* y, int nh, int nt, int nd,
                     long long s0, long long s1, long long s2, long long s3, size_t n, int backward) {
    const int half = nd / 2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int d = i % nd;
        const int t = (i / nd) % nt;
        const size_t bh = i / ((size_t)nd * nt);
        const int h = bh % nh;
        const size_t b = bh / nh;
        const long long base = (long long)b * s0 + (long long)h * s1 + (long long)t * s2;
        const float xd = to_f(x[base + (long long)d * s3]);
        const int p = d < half ? d + half : d - half;  // the partner element
        const float xp = to_f(x[base + (long long)p * s3]);
        const size_t row = (size_t)t * nd;
        float v;
        if (!backward) {
            const float sn = to_f(sin[row + d]);
            v = xd * to_f(cos[row + d]) + (d < half ? -xp : xp) * sn;
        } else {
            const float sp = to_f(sin[row + p]);
            v = xd * to_f(cos[row + d]) + (d < half ? xp : -xp) * sp;
        }
        y[i] = from_f<T>(v);
    }
}

#define ROPE(T, S)                                                                              \
    extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* y, int nh,  \
                                         int nt, int nd, long long s0, long long s1,           \
                                         long long s2, long long s3, size_t n, int backward) { \
        rope<T>(x, cos, sin, y, nh, nt, nd, s0, s1, s2, s3, n, backward);                      \
    }
FOR_EACH_DTYPE(ROPE)
