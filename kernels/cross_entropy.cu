// Cross-entropy over one vocabulary block of logits (see src/kernels/cross_entropy.rs), for
// the vocabulary-blocked loss: the head's logits exist one [n, len] block at a time.
//   ce_block_fwd: folds the block into each row's running (max, sum of exp, target logit),
//                 stats [n, 3] in f32, as an online log-sum-exp; logits are soft-capped first
//                 (cap * tanh(l / cap)) when softcap > 0.
//   ce_block_bwd: dl = (exp(z - lse) - [j == target]) * grad, times 1 - (z / cap)^2 under a
//                 soft cap, from lse_grad [n, 2] = (lse, grad of the row's loss).
// Targets are absolute vocabulary ids; the block holds ids start .. start + len.
#include "common.cuh"

__device__ __forceinline__ float capped(float l, float cap) { return cap > 0.f ? cap * tanhf(l / cap) : l; }

template <typename T>
__device__ void ce_block_fwd(const float* stats_in, const T* logits, const uint32_t* targets, float* stats_out,
                             int len, int start, float cap) {
    const size_t row = blockIdx.x;
    const T* lr = logits + row * len;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, capped(to_f(lr[j]), cap));
    m = block_max(m);
    float s = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) s += expf(capped(to_f(lr[j]), cap) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float m0 = stats_in[row * 3], s0 = stats_in[row * 3 + 1];
        const float m1 = fmaxf(m0, m);
        const float s1 = (s0 > 0.f ? s0 * expf(m0 - m1) : 0.f) + s * expf(m - m1);
        const int t = (int)targets[row] - start;
        stats_out[row * 3] = m1;
        stats_out[row * 3 + 1] = s1;
        stats_out[row * 3 + 2] = (t >= 0 && t < len) ? capped(to_f(lr[t]), cap) : stats_in[row * 3 + 2];
    }
}

template <typename T>
__device__ void ce_block_bwd(const T* logits, const uint32_t* targets, const float* lse_grad, T* dl, int n,
                             int len, int start, float cap) {
    const size_t total = (size_t)n * len;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / len;
        const int j = i % len;
        const float z = capped(to_f(logits[i]), cap);
        float d = expf(z - lse_grad[row * 2]) - ((int)targets[row] - start == j ? 1.f : 0.f);
        d *= lse_grad[row * 2 + 1];
        if (cap > 0.f) {
            const float t = z / cap;
            d *= 1.f - t * t;
        }
        dl[i] = from_f<T>(d);
    }
}

#define CE(T, S)                                                                                    \
    extern "C" __global__ void ce_block_fwd_##S(const float* stats_in, const T* logits,            \
                                                 const uint32_t* targets, float* stats_out,         \
                                                 int len, int start, float cap) {                   \
        ce_block_fwd<T>(stats_in, logits, targets, stats_out, len, start, cap);                     \
    }                                                                                               \
    extern "C" __global__ void ce_block_bwd_##S(const T* logits, const uint32_t* targets,          \
                                                 const float* lse_grad, T* dl, int n, int len,      \
                                                 int start, float cap) {                            \
        ce_block_bwd<T>(logits, targets, lse_grad, dl, n, len, start, cap);                         \
    }
FOR_EACH_DTYPE(CE)
