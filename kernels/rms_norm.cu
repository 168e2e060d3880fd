// RMSNorm forward and backward, one thread block per row (see src/kernels/rms_norm.rs).
//   forward:  y = x * r * w            r = 1 / sqrt(mean(x^2) + eps)
//             Llama rounds x * r to the input dtype before the weight multiply; Gemma
//             (unit_offset) multiplies by (1 + w) in f32 and rounds once.
//   backward: dx = r h - x r^3 mean(h x)   with h = g * w' (w' = w, or 1 + w), in f32.
// The norm weight is frozen: no weight gradient.
#include "common.cuh"

template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, int cols, float eps, int unit_offset) {
    const size_t row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    float ss = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f(xr[i]);
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss) / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float n = to_f(xr[i]) * r;
        const float wi = to_f(w[i]);
        yr[i] = unit_offset ? from_f<T>(n * (1.f + wi)) : from_f<T>(round_to<T>(n) * wi);
    }
}

template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* g, T* dx, int cols, float eps, int unit_offset) {
    const size_t row = blockIdx.x;
    const T* xr = x + row * cols;
    const T* gr = g + row * cols;
    T* dr = dx + row * cols;
    float ss = 0.f, hx = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f(xr[i]);
        const float wi = unit_offset ? 1.f + to_f(w[i]) : to_f(w[i]);
        ss += v * v;
        hx += to_f(gr[i]) * wi * v;
    }
    ss = block_sum(ss);
    hx = block_sum(hx);
    const float r = rsqrtf(ss / cols + eps);
    const float c = r * r * r * hx / cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float wi = unit_offset ? 1.f + to_f(w[i]) : to_f(w[i]);
        dr[i] = from_f<T>(to_f(gr[i]) * wi * r - to_f(xr[i]) * c);
    }
}

#define RMS_NORM(T, S)                                                                          \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int cols,       \
                                                 float eps, int unit_offset) {                 \
        rms_norm_fwd<T>(x, w, y, cols, eps, unit_offset);                                      \
    }                                                                                           \
    extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* g, T* dx,    \
                                                 int cols, float eps, int unit_offset) {       \
        rms_norm_bwd<T>(x, w, g, dx, cols, eps, unit_offset);                                  \
    }
FOR_EACH_DTYPE(RMS_NORM)
