// Gated MLP activations, forward and backward (see src/kernels/glu.rs), on contiguous
// gate g and up u of the same shape, in f32 inside:
//   forward:  y = act(g) u
//   backward: dg = dy u act'(g), du = dy act(g), written to out[0..n) and out[n..2n).
// act = silu (SwiGLU, act = 0) or gelu with the tanh approximation (GeGLU, act = 1).
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ void act_and_grad(float x, int act, float* a, float* da) {
    if (act == 0) {
        const float s = sigmoid(x);
        *a = x * s;
        *da = s * (1.f + x * (1.f - s));
    } else {
        const float k = 0.7978845608028654f;  // sqrt(2 / pi)
        const float inner = k * (x + 0.044715f * x * x * x);
        const float t = tanhf(inner);
        *a = 0.5f * x * (1.f + t);
        *da = 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * x * x);
    }
}

template <typename T>
__device__ void glu_fwd(const T* g, const T* u, T* y, size_t n, int act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float a, da;
        act_and_grad(to_f(g[i]), act, &a, &da);
        // The activation is a tensor of its own in the unfused path: round it like one.
        y[i] = from_f<T>(round_to<T>(a) * to_f(u[i]));
    }
}

template <typename T>
__device__ void glu_bwd(const T* g, const T* u, const T* dy, T* out, size_t n, int act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float a, da;
        act_and_grad(to_f(g[i]), act, &a, &da);
        const float d = to_f(dy[i]);
        out[i] = from_f<T>(d * to_f(u[i]) * da);
        out[n + i] = from_f<T>(d * round_to<T>(a));
    }
}

#define GLU(T, S)                                                                                \
    extern "C" __global__ void glu_fwd_##S(const T* g, const T* u, T* y, size_t n, int act) {   \
        glu_fwd<T>(g, u, y, n, act);                                                             \
    }                                                                                            \
    extern "C" __global__ void glu_bwd_##S(const T* g, const T* u, const T* dy, T* out,         \
                                            size_t n, int act) {                                 \
        glu_bwd<T>(g, u, dy, out, n, act);                                                       \
    }
FOR_EACH_DTYPE(GLU)
