// fpcore linear scan kernels: h_t = a_t * h_{t-1} + b_t over [B, T, D] (batch-first, D contiguous).
//
// A modern take on Martin & Cundy (2018, arXiv 1709.04057, section 3): their kernel runs three launches
// with a warp per time chunk, fp32 only, scratch cudaMalloc'd per call and the SM count fixed at 15.
// Here:
//   * a thread block owns 32 contiguous features (lanes, so every load is one coalesced 128 B line for
//     fp32) of one batch row, and W warps split each tile of W*L time steps: warp w takes L consecutive
//     steps, loads them all first (2L independent loads in flight per thread), reduces them in
//     registers, the W partial (A, H) pairs are scanned through shared memory, and each thread
//     re-scans its L steps from its incoming state and writes h. The block walks its time range tile
//     by tile carrying the state, so a, b are read once and h written once (the traffic of a copy).
//   * only when B * D / 32 blocks cannot fill the GPU (the host code asks for the SM count) is T also
//     split into G groups: scan_reduce writes one (A, H) aggregate per group into cached scratch, and
//     each group of scan_main folds the aggregates before it (G <= 256) as its carry-in: 2 launches.
//   * element types fp32 / fp64 / fp16 / bf16 (16-bit types passed as raw uint16 bits, converted with
//     PTX cvt or bit shifts, so no CUDA header is needed under NVRTC); fp32 accumulation (fp64 for
//     fp64).
//   * one kernel serves forward, reverse and backward: `reverse` walks t = T-1..0; `shifted` takes
//     the gate of the previously processed step (g_t = dL/dh_t + a_{t+1} g_{t+1}, paper C section 2.2)
//     and starts from zero; `has_da` also writes dL/da_t = g_t * h_prev_t, where h_prev_t is the
//     forward state before step t (the next step in this pass's order; `hb` at the end).
//
// Scan order: step i = 0..T-1 visits time t(i) = reverse ? T-1-i : i.
//   gate(i) = shifted ? (i == 0 ? 0 : a[t(i-1)]) : a[t(i)]
//   state(i) = gate(i) * state(i-1) + b[t(i)],  state(-1) = (has_h0 && !shifted) ? h0 : 0
//   out[t(i)] = state(i);  if has_da: da[t(i)] = state(i) * (i + 1 < T ? hf[t(i+1)] : (has_hb ? hb : 0))

#define FPCORE_W 8   // warps per block (time split inside a tile)
#define FPCORE_L 8   // steps per thread per tile

typedef unsigned short u16;

struct F32 {
    typedef float E; typedef float Acc;
    static __device__ __forceinline__ Acc load(const E* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void store(E* p, long long i, Acc v) { p[i] = v; }
};
struct F64 {
    typedef double E; typedef double Acc;
    static __device__ __forceinline__ Acc load(const E* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void store(E* p, long long i, Acc v) { p[i] = v; }
};
struct F16 {  // IEEE half as raw bits
    typedef u16 E; typedef float Acc;
    static __device__ __forceinline__ Acc load(const E* p, long long i) {
#ifdef FPCORE_HOST_EMULATION  // tests run these kernels on the CPU (see tests/test_scan_emulated.py)
        _Float16 h; __builtin_memcpy(&h, p + i, 2);
        return (float)h;
#else
        float f; u16 h = p[i];
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
#endif
    }
    static __device__ __forceinline__ void store(E* p, long long i, Acc v) {
#ifdef FPCORE_HOST_EMULATION
        _Float16 h = (_Float16)v; __builtin_memcpy(p + i, &h, 2);
#else
        u16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
        p[i] = h;
#endif
    }
};
struct BF16 {  // bfloat16 as raw bits: the top half of a float32
    typedef u16 E; typedef float Acc;
    static __device__ __forceinline__ Acc load(const E* p, long long i) {
        return __uint_as_float(((unsigned int)p[i]) << 16);
    }
    static __device__ __forceinline__ void store(E* p, long long i, Acc v) {
        unsigned int u = __float_as_uint(v);
        if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) {
            p[i] = (u16)((u >> 16) | 0x0040u);  // quiet NaN
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);     // round to nearest even
            p[i] = (u16)(u >> 16);
        }
    }
};

// One time tile's worth of shared state: the W per-warp partial pairs for each of the 32 lanes.
template <typename Acc>
struct Tile {
    Acc A[FPCORE_W][32];
    Acc H[FPCORE_W][32];
};

template <typename P>
__device__ __forceinline__ long long time_of(long long i, long long T, int reverse) {
    return reverse ? T - 1 - i : i;
}

// Load this thread's L steps (identity pairs outside [i0, i_end)) into registers.
template <typename P>
__device__ __forceinline__ void load_steps(const typename P::E* a, const typename P::E* b, long long row,
                                           long long D, long long d, bool active, long long T,
                                           long long i0, long long i_end, int reverse, int shifted,
                                           typename P::Acc* av, typename P::Acc* bv) {
    typedef typename P::Acc Acc;
#pragma unroll
    for (int k = 0; k < FPCORE_L; ++k) {
        long long i = i0 + k;
        if (active && i < i_end) {
            long long t = time_of<P>(i, T, reverse);
            bv[k] = P::load(b, (row + t) * D + d);
            if (shifted) {
                av[k] = (i == 0) ? Acc(0) : P::load(a, (row + time_of<P>(i - 1, T, reverse)) * D + d);
            } else {
                av[k] = P::load(a, (row + t) * D + d);
            }
        } else {
            av[k] = Acc(1);
            bv[k] = Acc(0);
        }
    }
}

// Phase 1 (only when T is split into G > 1 groups): the (A, H) aggregate of each group.
// Where a thread works: lane (feature within a 32-wide block) and warp (time slice within a tile);
// blockIdx.x walks (batch row bi, feature block), blockIdx.y the time group g = [i_begin, i_end).
struct Place {
    int lane, warp;
    long long bi, d, g, i_begin, i_end, row;
    bool active;
};

__device__ __forceinline__ Place place_of(long long T, long long D, long long span) {
    Place p;
    p.lane = threadIdx.x;
    p.warp = threadIdx.y;
    const long long ndblk = (D + 31) / 32;
    p.bi = blockIdx.x / ndblk;
    p.d = (blockIdx.x % ndblk) * 32 + p.lane;
    p.active = p.d < D;
    p.g = blockIdx.y;
    p.i_begin = p.g * span;
    p.i_end = (p.i_begin + span < T) ? p.i_begin + span : T;
    p.row = p.bi * T;
    return p;
}

template <typename P>
__device__ void scan_reduce_impl(const typename P::E* a, const typename P::E* b, long long Bn, long long T,
                                 long long D, long long span, int reverse, int shifted,
                                 typename P::Acc* aggA, typename P::Acc* aggH) {
    typedef typename P::Acc Acc;
    __shared__ Tile<Acc> tile;
    const Place at = place_of(T, D, span);
    const int lane = at.lane, warp = at.warp;
    const long long bi = at.bi, d = at.d, g = at.g, i_begin = at.i_begin, i_end = at.i_end, row = at.row;
    const bool active = at.active;
    Acc CA = Acc(1), CH = Acc(0);  // the group's running aggregate (identity to start)
    for (long long start = i_begin; start < i_end; start += FPCORE_W * FPCORE_L) {
        Acc av[FPCORE_L], bv[FPCORE_L];
        load_steps<P>(a, b, row, D, d, active, T, start + warp * FPCORE_L, i_end, reverse, shifted, av, bv);
        Acc A = Acc(1), H = Acc(0);
#pragma unroll
        for (int k = 0; k < FPCORE_L; ++k) { H = av[k] * H + bv[k]; A = A * av[k]; }
        tile.A[warp][lane] = A; tile.H[warp][lane] = H;
        __syncthreads();
        for (int w = 0; w < FPCORE_W; ++w) { CH = tile.A[w][lane] * CH + tile.H[w][lane]; CA = CA * tile.A[w][lane]; }
        __syncthreads();
    }
    if (warp == 0 && active) {
        long long o = (g * Bn + bi) * D + d;  // scratch layout (G, B, D)
        aggA[o] = CA; aggH[o] = CH;
    }
}

// Phase 2+3: carry-in from h0 and the groups before, then scan the group's time range tile by tile.
template <typename P>
__device__ void scan_main_impl(const typename P::E* a, const typename P::E* b, const typename P::E* h0,
                               typename P::E* out, const typename P::E* hf, const typename P::E* hb,
                               typename P::E* da, const typename P::Acc* aggA, const typename P::Acc* aggH,
                               long long Bn, long long T, long long D, long long span, int reverse,
                               int shifted, int has_h0, int has_da, int has_hb) {
    typedef typename P::Acc Acc;
    __shared__ Tile<Acc> tile;
    const Place at = place_of(T, D, span);
    const int lane = at.lane, warp = at.warp;
    const long long bi = at.bi, d = at.d, g = at.g, i_begin = at.i_begin, i_end = at.i_end, row = at.row;
    const bool active = at.active;
    Acc carry = (active && has_h0 && !shifted) ? P::load(h0, bi * D + d) : Acc(0);
    for (long long gg = 0; gg < g; ++gg) {  // fold the aggregates of the groups before this one
        long long o = (gg * Bn + bi) * D + d;
        if (active) carry = aggA[o] * carry + aggH[o];
    }
    const Acc h_end = (active && has_hb) ? P::load(hb, bi * D + d) : Acc(0);
    for (long long start = i_begin; start < i_end; start += FPCORE_W * FPCORE_L) {
        const long long i0 = start + warp * FPCORE_L;
        Acc av[FPCORE_L], bv[FPCORE_L];
        load_steps<P>(a, b, row, D, d, active, T, i0, i_end, reverse, shifted, av, bv);
        Acc A = Acc(1), H = Acc(0);
#pragma unroll
        for (int k = 0; k < FPCORE_L; ++k) { H = av[k] * H + bv[k]; A = A * av[k]; }
        tile.A[warp][lane] = A; tile.H[warp][lane] = H;
        __syncthreads();
        Acc h = carry;
        for (int w = 0; w < warp; ++w) h = tile.A[w][lane] * h + tile.H[w][lane];
        Acc next = h;  // the state after the whole tile: the carry for the next one
        for (int w = warp; w < FPCORE_W; ++w) next = tile.A[w][lane] * next + tile.H[w][lane];
#pragma unroll
        for (int k = 0; k < FPCORE_L; ++k) {
            const long long i = i0 + k;
            h = av[k] * h + bv[k];
            if (active && i < i_end) {
                const long long idx = (row + time_of<P>(i, T, reverse)) * D + d;
                P::store(out, idx, h);
                if (has_da) {
                    Acc hp = (i + 1 < T) ? P::load(hf, (row + time_of<P>(i + 1, T, reverse)) * D + d) : h_end;
                    P::store(da, idx, h * hp);
                }
            }
        }
        carry = next;
        __syncthreads();  // the tile buffer is rewritten by the next iteration
    }
}

#define FPCORE_DEFINE(SUFFIX, P)                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * FPCORE_W)                                           \
    scan_reduce_##SUFFIX(const P::E* a, const P::E* b, long long Bn, long long T, long long D,            \
                         long long span, int reverse, int shifted, P::Acc* aggA, P::Acc* aggH) {          \
        scan_reduce_impl<P>(a, b, Bn, T, D, span, reverse, shifted, aggA, aggH);                          \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * FPCORE_W)                                           \
    scan_main_##SUFFIX(const P::E* a, const P::E* b, const P::E* h0, P::E* out, const P::E* hf,           \
                       const P::E* hb, P::E* da, const P::Acc* aggA, const P::Acc* aggH, long long Bn,    \
                       long long T, long long D, long long span, int reverse, int shifted, int has_h0,    \
                       int has_da, int has_hb) {                                                          \
        scan_main_impl<P>(a, b, h0, out, hf, hb, da, aggA, aggH, Bn, T, D, span, reverse, shifted,        \
                          has_h0, has_da, has_hb);                                                        \
    }

FPCORE_DEFINE(f32, F32)
FPCORE_DEFINE(f64, F64)
FPCORE_DEFINE(f16, F16)
FPCORE_DEFINE(bf16, BF16)
