// NF4 dequantization with double-quantized absmax, bitsandbytes' layout (src/quant/nf4.rs),
// for the QLoRA forward product and input gradient: one row block of a frozen weight is
// dequantized to the compute dtype right before its GEMM and dropped after it.
//   codes:        two 4-bit codes per byte, element 2k in the high nibble of byte k
//   absmax_codes: one 8-bit index into the dynamic map per 64 elements
//   scales:       one f32 per 256 absmax codes; offset: the mean subtracted before that
//   tables:       [16 NF4 levels, 256 dynamic-map values] in f32
// Element e of the block (which starts at element first * 64 of the matrix) is
//   level[code] * (dyn[absmax_code[b]] * scales[b / 256] + offset), b = first + e / 64,
// each product rounded in f32 as bitsandbytes' CPU kernel does, then rounded to T.
#include "common.cuh"

template <typename T>
__device__ void nf4_dequant(const uint8_t* codes, const uint8_t* absmax_codes, const float* scales,
                            const float* tables, float offset, size_t first, size_t n_bytes, T* out) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n_bytes; k += (size_t)gridDim.x * blockDim.x) {
        const size_t e = 2 * k;
        const size_t b = first + e / 64;
        // Rounded step by step as the host does: a fused multiply-add would differ in the last bit.
        const float absmax = __fadd_rn(__fmul_rn(tables[16 + absmax_codes[b]], scales[b / 256]), offset);
        const uint8_t byte = codes[first * 32 + k];
        out[e] = from_f<T>(__fmul_rn(tables[byte >> 4], absmax));
        out[e + 1] = from_f<T>(__fmul_rn(tables[byte & 15], absmax));
    }
}

#define NF4(T, S)                                                                                  \
    extern "C" __global__ void nf4_dequant_##S(const uint8_t* codes, const uint8_t* absmax_codes, \
                                                const float* scales, const float* tables,          \
                                                float offset, size_t first, size_t n_bytes, T* out) { \
        nf4_dequant<T>(codes, absmax_codes, scales, tables, offset, first, n_bytes, out);          \
    }
FOR_EACH_DTYPE(NF4)
