// One fused AdamW update of an f32 parameter (see src/kernels/adamw.rs), in place of the ~14
// tensor ops per parameter of the unfused step. state holds [m; v; (unused)], n values each,
// as the previous update left them; out gets [m'; v'; p'] (the next step's state, and the
// parameter to copy back). The scalars come from the host in f32, and each line below is one
// op of the unfused path (candle's affine x·a + b for a product or sum with a scalar), so the
// two round alike:
//   g' = g·coef                       (gradient clipping)
//   m' = m·b1 + g'·(1 - b1)
//   v' = v·b2 + g'²·(1 - b2)
//   p' = p·(1 - lr·wd) - (m' / (sqrt(v')·(1/sqrt(bc2)) + eps))·(lr/bc1)
#include "common.cuh"

extern "C" __global__ void adamw_f32(const float* p, const float* g, const float* state, float* out,
                                     size_t n, float coef, float b1, float one_minus_b1, float b2,
                                     float one_minus_b2, float decay, float inv_sqrt_bc2, float eps,
                                     float step_size) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gc = __fmul_rn(g[i], coef);
        const float m = __fadd_rn(__fmul_rn(state[i], b1), __fmul_rn(gc, one_minus_b1));
        const float v = __fadd_rn(__fmul_rn(state[n + i], b2), __fmul_rn(__fmul_rn(gc, gc), one_minus_b2));
        const float denom = __fadd_rn(__fmul_rn(sqrtf(v), inv_sqrt_bc2), eps);
        const float update = __fmul_rn(__fdiv_rn(m, denom), step_size);
        out[i] = m;
        out[n + i] = v;
        out[2 * n + i] = __fsub_rn(__fmul_rn(p[i], decay), update);
    }
}
