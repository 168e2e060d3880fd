// FlashAttention-2 forward and backward for training (Dao 2023, Algorithms 1 and 2), see
// src/kernels/attention.rs. bf16/f16 inputs, f32 accumulation on tensor cores through
// mma.sync.m16n8k16 (sm_80+), head dims 64, 128 and 256.
//
//   q [B, H, Tq, D], k and v [B, KVH, Tk, D]; q head h reads kv head h / (H / KVH).
//   Query i sits at position offset + i, key j at j; key j is allowed for query i iff
//   j <= offset + i, (window == 0 or offset + i - j < window) and key_valid[b, j] != 0.
//   Packed rows (the varlen form; offset 0, Tq == Tk): seg_start[b, i] is where query i's
//   conversation starts, and key j is allowed only if j >= seg_start[b, i]. The starts are
//   non-decreasing along a row, so a query tile reads keys from its first query's start, and a
//   key tile's backward stops at the first query tile that starts after it.
//   forward:  o = softmax(q k^T scale) v over allowed keys, lse = log-sum-exp (natural log);
//             a row without an allowed key gets o = 0 and lse = +inf.
//   backward: delta = rowsum(dO o); per block of keys, over the query tiles that see it:
//             P = exp(S scale - lse), dV += P^T dO, dP = dO V^T, dS = P (dP - delta),
//             dK += dS^T Q scale, dQ += dS K scale. dq, dk and dv are f32 sums (atomics;
//             several q heads add into one kv head), cast to the input dtype by the caller.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16/.f16), for lane
// = 4 g + t: A (16x16, row-major) a0a1 = A[g][2t..2t+1], a2a3 = A[g+8][2t..], a4a5 =
// A[g][2t+8..], a6a7 = A[g+8][2t+8..]; B (16x8, "col") b0b1 = B[2t..2t+1][g], b2b3 =
// B[2t+8..2t+9][g]; C (16x8) c0c1 = C[g][2t..2t+1], c2c3 = C[g+8][2t..2t+1]. The lower
// index of each pair sits in the low half of its 32-bit register. So two C tiles side by side
// (columns 0-7 and 8-15) are, packed, the A fragment of their 16x16 product operand.
// ldmatrix .trans: lane 8 m + r gives the address of row r of matrix m; register m of lane
// 4 g + t then holds rows 2t, 2t+1 of column g of that matrix, which is a B fragment half
// of a row-major [k][n] tile (and an A fragment quarter of a transposed [k][m] tile).
#include "common.cuh"

#define FLASH_THREADS 128
#define FLASH_WARPS 4

#ifdef LORA_TRAIN_EMU
#define flash_smem (::emu::S.smem)  // kernels/emu/cuda_emu.h
#else
extern __shared__ __align__(16) unsigned char flash_smem[];
#endif

namespace {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

template <typename T> struct Mma;

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef LORA_TRAIN_EMU
        ::emu::mma_m16n8k16(c, a, b0, b1, true);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};

template <> struct Mma<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef LORA_TRAIN_EMU
        ::emu::mma_m16n8k16(c, a, b0, b1, false);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};

template <typename T> __device__ __forceinline__ uint32_t lds32(const T* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// volatile + memory: the tile under a fixed address changes between loop iterations.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
#ifdef LORA_TRAIN_EMU
    ::emu::ldsm_x4_trans(r, p);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
#endif
}

// A fragment of rows row0..row0+15, columns col0..col0+15 of a row-major [m][k] tile.
template <typename T>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const T* s, int stride, int row0, int col0, int g, int t) {
    const T* p = s + (row0 + g) * stride + col0 + 2 * t;
    a[0] = lds32(p);
    a[1] = lds32(p + 8 * stride);
    a[2] = lds32(p + 8);
    a[3] = lds32(p + 8 * stride + 8);
}

// B fragment (k = col0..col0+15, n = row0..row0+7) of a tile stored [n][k] row-major.
template <typename T>
__device__ __forceinline__ void frag_b_nk(uint32_t& b0, uint32_t& b1, const T* s, int stride, int row0, int col0, int g, int t) {
    const T* p = s + (row0 + g) * stride + col0 + 2 * t;
    b0 = lds32(p);
    b1 = lds32(p + 8);
}

// B fragments of two n-tiles (n = n0..n0+7 in r0,r1 and n0+8..n0+15 in r2,r3) for
// k = k0..k0+15 of a tile stored [k][n] row-major.
template <typename T>
__device__ __forceinline__ void frag_b_kn_x2(uint32_t (&r)[4], const T* s, int stride, int k0, int n0, int lane) {
    ldsm_x4_trans(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + n0 + (lane >> 4) * 8);
}

// A fragment (m = m0..m0+15, k = k0..k0+15) of a tile stored transposed, [k][m] row-major.
template <typename T>
__device__ __forceinline__ void frag_a_km(uint32_t (&a)[4], const T* s, int stride, int k0, int m0, int lane) {
    ldsm_x4_trans(a, s + (k0 + (lane & 7) + (lane >> 4) * 8) * stride + m0 + ((lane >> 3) & 1) * 8);
}

// The A fragment (k = 16 kk .. 16 kk + 15) made of accumulator tiles 2 kk and 2 kk + 1.
template <typename T, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
    a[0] = Mma<T>::pack(c[2 * kk][0], c[2 * kk][1]);
    a[1] = Mma<T>::pack(c[2 * kk][2], c[2 * kk][3]);
    a[2] = Mma<T>::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = Mma<T>::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// Copies rows row0..row0+rows of a [n][D] matrix into a tile with row stride S, zeros past n.
template <typename T, int D, int S>
__device__ __forceinline__ void load_rows(T* dst, const T* src, int row0, int rows, int n) {
    constexpr int CHUNKS = D / 8;  // 16 bytes each
    for (int i = threadIdx.x; i < rows * CHUNKS; i += FLASH_THREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row0 + r < n) v = *reinterpret_cast<const uint4*>(src + (size_t)(row0 + r) * D + c);
        *reinterpret_cast<uint4*>(dst + r * S + c) = v;
    }
}

__device__ __forceinline__ bool allowed(int pos, int j, int window) {
    return j <= pos && (window <= 0 || pos - j < window);
}

// Stops the kernel when the launch gave less dynamic shared memory than the tiles need.
__device__ __forceinline__ void check_smem(unsigned need) {
    unsigned have;
#ifdef LORA_TRAIN_EMU
    have = (unsigned)::emu::S.smem_size;
#else
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
#endif
    if (have < need) __trap();
}

// Tile sizes; src/kernels/attention.rs repeats them to size the dynamic shared memory.
template <int D> struct FwdCfg;
template <> struct FwdCfg<64> { static constexpr int BR = 64, BC = 64; };
template <> struct FwdCfg<128> { static constexpr int BR = 64, BC = 64; };
template <> struct FwdCfg<256> { static constexpr int BR = 64, BC = 32; };

// KW warps along the keys (16 keys each), DS warps along the head dim for dK/dV.
template <int D> struct BwdCfg;
template <> struct BwdCfg<64> { static constexpr int BR = 64, KW = 4, DS = 1; };
template <> struct BwdCfg<128> { static constexpr int BR = 32, KW = 4, DS = 1; };
template <> struct BwdCfg<256> { static constexpr int BR = 32, KW = 2, DS = 2; };

template <typename T, int D>
__device__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const uint8_t* __restrict__ key_valid, const uint32_t* __restrict__ seg_start,
                          T* __restrict__ o, float* __restrict__ lse, int H, int KVH, int Tq, int Tk, int offset,
                          int window, float scale) {
    constexpr int BR = FwdCfg<D>::BR, BC = FwdCfg<D>::BC, S = D + 8;
    static_assert(BR == 16 * FLASH_WARPS, "one warp per 16 query rows");
    check_smem((BR + 2 * BC) * S * sizeof(T) + BC);
    T* Qs = reinterpret_cast<T*>(flash_smem);
    T* Ks = Qs + BR * S;
    T* Vs = Ks + BC * S;
    uint8_t* ok_s = reinterpret_cast<uint8_t*>(Vs + BC * S);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    // The last query tiles see the most keys: start them first.
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BR;
    const T* qb = q + (size_t)bh * Tq * D;
    const T* kb = k + (size_t)(b * KVH + kvh) * Tk * D;
    const T* vb = v + (size_t)(b * KVH + kvh) * Tk * D;
    const uint8_t* valid = key_valid ? key_valid + (size_t)b * Tk : nullptr;
    const float scale2 = scale * LOG2E;

    load_rows<T, D, S>(Qs, qb, q0, BR, Tq);
    const int p_lo = offset + q0, p_hi = offset + min(q0 + BR, Tq) - 1;
    const uint32_t* starts = seg_start ? seg_start + (size_t)b * Tq : nullptr;
    int k_begin = window > 0 ? max(0, p_lo - window + 1) : 0;
    if (starts) k_begin = max(k_begin, (int)starts[q0]);
    const int k_end = min(Tk, p_hi + 1);
    const int row = q0 + warp * 16 + g;  // and row + 8
    const int pos[2] = {offset + row, offset + row + 8};
    // The first key each of this thread's two rows may see (0 unless packed).
    const int first[2] = {starts && row < Tq ? (int)starts[row] : 0,
                          starts && row + 8 < Tq ? (int)starts[row + 8] : 0};

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int kt = k_begin / BC * BC; kt < k_end; kt += BC) {
        __syncthreads();
        load_rows<T, D, S>(Ks, kb, kt, BC, Tk);
        load_rows<T, D, S>(Vs, vb, kt, BC, Tk);
        for (int i = threadIdx.x; i < BC; i += FLASH_THREADS)
            ok_s[i] = kt + i < Tk && (valid == nullptr || valid[kt + i] != 0);
        __syncthreads();

        float s[BC / 8][4];
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            uint32_t a[4];
            frag_a(a, Qs, S, warp * 16, ks * 16, g, t);
#pragma unroll
            for (int n = 0; n < BC / 8; ++n) {
                uint32_t b0, b1;
                frag_b_nk(b0, b1, Ks, S, n * 8, ks * 16, g, t);
                Mma<T>::run(s[n], a, b0, b1);
            }
        }

        // Online softmax in base 2 on the scaled scores; masked entries are -inf.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < BC / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int jl = n * 8 + 2 * t + (e & 1);
                const bool ok = ok_s[jl] && allowed(pos[e >> 1], kt + jl, window) && kt + jl >= first[e >> 1];
                s[n][e] = ok ? s[n][e] * scale2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            }
        float base[2], alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m[r], mx[r]);
            // Nothing allowed yet: keep exponents finite (exp2(-inf - 0) = 0, never NaN).
            base[r] = m_new == -INFINITY ? 0.f : m_new;
            alpha[r] = exp2f(m[r] - base[r]);
            m[r] = m_new;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int n = 0; n < BC / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - base[e >> 1]);
                l[e >> 1] += s[n][e];
            }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }

        // O += P V with P rounded to the input dtype, as the unfused path's probabilities are.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            acc_to_a<T>(a, s, kk);
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
                uint32_t bf[4];
                frag_b_kn_x2(bf, Vs, S, kk * 16, dn * 16, lane);
                Mma<T>::run(acc[2 * dn], a, bf[0], bf[1]);
                Mma<T>::run(acc[2 * dn + 1], a, bf[2], bf[3]);
            }
        }
    }

    T* ob = o + (size_t)bh * Tq * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int i = row + 8 * r;
        if (i >= Tq) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<uint32_t*>(ob + (size_t)i * D + n * 8 + 2 * t) =
                Mma<T>::pack(acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
        if (t == 0) lse[(size_t)bh * Tq + i] = l[r] > 0.f ? (m[r] + log2f(l[r])) * LN2 : INFINITY;
    }
}

// delta[row] = sum_d o[row, d] dO[row, d]; one warp per row.
template <typename T>
__device__ void flash_bwd_delta(const T* __restrict__ o, const T* __restrict__ g, float* __restrict__ delta,
                                int rows, int cols) {
    const int row = blockIdx.x * FLASH_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* orow = o + (size_t)row * cols;
    const T* grow = g + (size_t)row * cols;
    float acc = 0.f;
    for (int i = lane; i < cols; i += 32) acc += to_f(orow[i]) * to_f(grow[i]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

template <typename T, int D>
__device__ void flash_bwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ dout, const float* __restrict__ lse,
                          const float* __restrict__ delta, const uint8_t* __restrict__ key_valid,
                          const uint32_t* __restrict__ seg_start, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                          int H, int KVH, int Tq, int Tk, int offset, int window, float scale) {
    constexpr int BR = BwdCfg<D>::BR, KW = BwdCfg<D>::KW, DS = BwdCfg<D>::DS;
    constexpr int BC = 16 * KW, DW = D / DS, S = D + 8, SP = BR + 8;
    static_assert(KW * DS == FLASH_WARPS, "warps");
    check_smem((2 * BC + 2 * BR) * S * sizeof(T) + BC * SP * sizeof(T) + 2 * BR * sizeof(float) + BC);
    T* Ks = reinterpret_cast<T*>(flash_smem);
    T* Vs = Ks + BC * S;
    T* Qs = Vs + BC * S;
    T* dOs = Qs + BR * S;
    T* dSs = dOs + BR * S;  // dS^T: [key][query]
    float* lse_s = reinterpret_cast<float*>(dSs + BC * SP);  // times log2(e)
    float* delta_s = lse_s + BR;
    uint8_t* ok_s = reinterpret_cast<uint8_t*>(delta_s + BR);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kg = warp / DS, ds = warp % DS;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    const int k0 = blockIdx.y * BC;
    // Queries that see at least one key of k0..k0+BC-1.
    const int q_begin = max(0, k0 - offset);
    const int q_end = window > 0 ? min(Tq, k0 + BC - 1 + window - offset) : Tq;
    if (q_begin >= q_end) return;

    const size_t kv_base = (size_t)(b * KVH + kvh) * Tk;
    const uint32_t* starts = seg_start ? seg_start + (size_t)b * Tq : nullptr;
    const T* qb = q + (size_t)bh * Tq * D;
    const T* gb = dout + (size_t)bh * Tq * D;
    const float scale2 = scale * LOG2E;

    load_rows<T, D, S>(Ks, k + kv_base * D, k0, BC, Tk);
    load_rows<T, D, S>(Vs, v + kv_base * D, k0, BC, Tk);
    for (int i = threadIdx.x; i < BC; i += FLASH_THREADS)
        ok_s[i] = k0 + i < Tk && (key_valid == nullptr || key_valid[(size_t)b * Tk + k0 + i] != 0);

    float acc_dk[DW / 8][4], acc_dv[DW / 8][4];
#pragma unroll
    for (int n = 0; n < DW / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dk[n][e] = acc_dv[n][e] = 0.f;

    const int key_l[2] = {kg * 16 + g, kg * 16 + g + 8};  // this thread's keys in the tile

    for (int qt = q_begin / BR * BR; qt < q_end; qt += BR) {
        // Packed: this tile's queries, and every later one's, start after the key tile.
        if (starts && (int)starts[qt] > k0 + BC - 1) break;
        __syncthreads();
        load_rows<T, D, S>(Qs, qb, qt, BR, Tq);
        load_rows<T, D, S>(dOs, gb, qt, BR, Tq);
        for (int i = threadIdx.x; i < BR; i += FLASH_THREADS) {
            const bool in = qt + i < Tq;
            lse_s[i] = in ? lse[(size_t)bh * Tq + qt + i] * LOG2E : INFINITY;
            delta_s[i] = in ? delta[(size_t)bh * Tq + qt + i] : 0.f;
        }
        __syncthreads();

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys and the BR queries.
        float st[BR / 8][4], dp[BR / 8][4];
#pragma unroll
        for (int n = 0; n < BR / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[n][e] = dp[n][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            uint32_t ak[4], av[4];
            frag_a(ak, Ks, S, kg * 16, ks * 16, g, t);
            frag_a(av, Vs, S, kg * 16, ks * 16, g, t);
#pragma unroll
            for (int n = 0; n < BR / 8; ++n) {
                uint32_t b0, b1;
                frag_b_nk(b0, b1, Qs, S, n * 8, ks * 16, g, t);
                Mma<T>::run(st[n], ak, b0, b1);
                frag_b_nk(b0, b1, dOs, S, n * 8, ks * 16, g, t);
                Mma<T>::run(dp[n], av, b0, b1);
            }
        }

        // P^T in st, dS^T in dp.
#pragma unroll
        for (int n = 0; n < BR / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int il = n * 8 + 2 * t + (e & 1);
                const int kl = key_l[e >> 1];
                const int qi = qt + il;
                const bool ok = ok_s[kl] && allowed(offset + qi, k0 + kl, window) &&
                                (starts == nullptr || (qi < Tq && k0 + kl >= (int)starts[qi]));
                const float p = ok ? exp2f(st[n][e] * scale2 - lse_s[il]) : 0.f;
                st[n][e] = p;
                dp[n][e] = p * (dp[n][e] - delta_s[il]);
            }

        // dV += P^T dO and dK += dS^T Q over this warp's DW head dims.
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) {
            uint32_t ap[4], as[4];
            acc_to_a<T>(ap, st, kk);
            acc_to_a<T>(as, dp, kk);
#pragma unroll
            for (int dn = 0; dn < DW / 16; ++dn) {
                uint32_t bf[4];
                frag_b_kn_x2(bf, dOs, S, kk * 16, ds * DW + dn * 16, lane);
                Mma<T>::run(acc_dv[2 * dn], ap, bf[0], bf[1]);
                Mma<T>::run(acc_dv[2 * dn + 1], ap, bf[2], bf[3]);
                frag_b_kn_x2(bf, Qs, S, kk * 16, ds * DW + dn * 16, lane);
                Mma<T>::run(acc_dk[2 * dn], as, bf[0], bf[1]);
                Mma<T>::run(acc_dk[2 * dn + 1], as, bf[2], bf[3]);
            }
        }

        // dS^T to shared memory for dQ, which sums over the keys of every warp.
        if (ds == 0) {
#pragma unroll
            for (int n = 0; n < BR / 8; ++n) {
                *reinterpret_cast<uint32_t*>(dSs + key_l[0] * SP + n * 8 + 2 * t) = Mma<T>::pack(dp[n][0], dp[n][1]);
                *reinterpret_cast<uint32_t*>(dSs + key_l[1] * SP + n * 8 + 2 * t) = Mma<T>::pack(dp[n][2], dp[n][3]);
            }
        }
        __syncthreads();

        // dQ[qt..qt+BR) += dS K scale, in tasks of 16 queries x 32 dims.
        constexpr int MB = BR / 16, TASKS = MB * (D / 32);
        for (int task = warp; task < TASKS; task += FLASH_WARPS) {
            const int mb = task % MB, dc = task / MB;
            float c[4][4];
#pragma unroll
            for (int n = 0; n < 4; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                uint32_t a[4];
                frag_a_km(a, dSs, SP, kk * 16, mb * 16, lane);
#pragma unroll
                for (int dn = 0; dn < 2; ++dn) {
                    uint32_t bf[4];
                    frag_b_kn_x2(bf, Ks, S, kk * 16, dc * 32 + dn * 16, lane);
                    Mma<T>::run(c[2 * dn], a, bf[0], bf[1]);
                    Mma<T>::run(c[2 * dn + 1], a, bf[2], bf[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int i = qt + mb * 16 + g + 8 * r;
                if (i >= Tq) continue;
                float* dst = dq + ((size_t)bh * Tq + i) * D + dc * 32 + 2 * t;
#pragma unroll
                for (int n = 0; n < 4; ++n) {
                    atomicAdd(dst + n * 8, c[n][2 * r] * scale);
                    atomicAdd(dst + n * 8 + 1, c[n][2 * r + 1] * scale);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = k0 + key_l[r];
        if (j >= Tk) continue;
        const size_t at = (kv_base + j) * D + ds * DW + 2 * t;
#pragma unroll
        for (int n = 0; n < DW / 8; ++n) {
            atomicAdd(dk + at + n * 8, acc_dk[n][2 * r] * scale);
            atomicAdd(dk + at + n * 8 + 1, acc_dk[n][2 * r + 1] * scale);
            atomicAdd(dv + at + n * 8, acc_dv[n][2 * r]);
            atomicAdd(dv + at + n * 8 + 1, acc_dv[n][2 * r + 1]);
        }
    }
}

}  // namespace

#define FLASH_HEAD(T, S, D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS) flash_fwd_##D##_##S(                        \
        const T* q, const T* k, const T* v, const uint8_t* key_valid, const uint32_t* seg_start, T* o,       \
        float* lse, int H, int KVH, int Tq, int Tk, int offset, int window, float scale) {                   \
        flash_fwd<T, D>(q, k, v, key_valid, seg_start, o, lse, H, KVH, Tq, Tk, offset, window, scale);      \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS) flash_bwd_##D##_##S(                        \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,             \
        const uint8_t* key_valid, const uint32_t* seg_start, float* dq, float* dk, float* dv, int H,        \
        int KVH, int Tq, int Tk, int offset, int window, float scale) {                                      \
        flash_bwd<T, D>(q, k, v, dout, lse, delta, key_valid, seg_start, dq, dk, dv, H, KVH, Tq, Tk, offset, \
                        window, scale);                                                                      \
    }

#define FLASH_DTYPE(T, S)                                                                                    \
    FLASH_HEAD(T, S, 64)                                                                                     \
    FLASH_HEAD(T, S, 128)                                                                                    \
    FLASH_HEAD(T, S, 256)                                                                                    \
    extern "C" __global__ void __launch_bounds__(FLASH_THREADS) flash_bwd_delta_##S(                        \
        const T* o, const T* dout, float* delta, int rows, int cols) {                                       \
        flash_bwd_delta<T>(o, dout, delta, rows, cols);                                                      \
    }

FLASH_DTYPE(__nv_bfloat16, bf16)
FLASH_DTYPE(__half, f16)
