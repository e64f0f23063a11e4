// Convolution as implicit GEMM, and grouped / depthwise convolution direct.
// CPU twin: bevrt_kernels::reference::conv (same epilogue, same rounding, same layouts).
//
// GEMM view: M = N*OH*OW output pixels, N = K output channels, K = C*R*S (kdim).
// Activations are NCHW (the plan's one layout, shared with ONNX and the CPU backend); weights
// are [K][kpad], row k holding (c, r, s) in that order, zero beyond kdim, kpad a multiple of
// 32. The block tile is 64 pixels x 64 channels x 32 K, loaded into shared memory K-contiguous
// (pixels gathered im2col-style on the fly, padding read as the input zero point); 4 warps
// each own a 32x32 quarter.
//
// INT8 (conv_i8_imma: mma.sync m16n8k32 tensor cores, sm_80+ incl. Orin and Hopper;
// conv_i8_dp4a: __dp4a on CUDA cores, every SM from 6.1): int32 accumulation is exact, so
// both equal the CPU reference bit for bit. Epilogue:
//   a = acc - in_zp * wsum[k]                          (int32, exact)
//   y = (float)a * mult[k] + bias[k]                   (mult = s_x * s_w[k], two roundings)
//   y = activate(y)                                    (common.cuh)
//   out: f32 y | f16 round(y) | int8 quantize_i8(y, out_scale, out_zp)
// FP16 (conv_f16_mma: mma.sync m16n8k16, f32 accumulation): y = acc + bias[k], same tail;
// the accumulation order differs from the CPU's, so FP16 is checked to 1e-3 relative.
#include "common.cuh"

struct ConvParams {
    int n, c, h, w;      // input
    int k, oh, ow;       // output channels and size
    int r, s;            // kernel size
    int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;  // pad = top / left
    int groups;          // direct kernels only (GEMM kernels: 1)
    int kdim, kpad;      // (c / groups) * r * s, and the weight row length
    int in_zp;           // int8 input zero point (signed domain)
    int act;             // activate() code
    float act_a, act_b;
    int out_mode;        // 0 f32, 1 f16, 2 int8
    float out_scale;
    int out_zp;
};

#define BM 64
#define BN 64
#define BK 32
#define NTHREADS 128

__device__ __forceinline__ void store_out(const ConvParams& p, void* y, int m, int kk, float v) {
    int ox = m % p.ow;
    int t = m / p.ow;
    int oy = t % p.oh;
    int n = t / p.oh;
    size_t o = (((size_t)n * p.k + kk) * p.oh + oy) * p.ow + ox;
    v = activate(v, p.act, p.act_a, p.act_b);
    if (p.out_mode == 0)
        ((float*)y)[o] = v;
    else if (p.out_mode == 1)
        ((half_bits*)y)[o] = f2h(v);
    else
        ((signed char*)y)[o] = quantize_i8(v, p.out_scale, p.out_zp);
}

// Each thread gathers the same output pixel (tid % 64) for 16 K positions per tile.
struct PixelCursor {
    int n, iy0, ix0;
    bool valid;
};

__device__ __forceinline__ PixelCursor pixel_cursor(const ConvParams& p, int m) {
    PixelCursor pc;
    int mt = p.n * p.oh * p.ow;
    pc.valid = m < mt;
    int mm = pc.valid ? m : 0;
    int ox = mm % p.ow;
    int t = mm / p.ow;
    pc.iy0 = (t % p.oh) * p.stride_h - p.pad_h;
    pc.ix0 = ox * p.stride_w - p.pad_w;
    pc.n = t / p.oh;
    return pc;
}

// Input element for GEMM column kg of the pixel, or `pad` outside the image / beyond kdim.
template <typename T>
__device__ __forceinline__ T gather(const ConvParams& p, const T* __restrict__ x,
                                    const PixelCursor& pc, int kg, T pad) {
    if (!pc.valid || kg >= p.kdim) return pad;
    int rs = p.r * p.s;
    int c = kg / rs;
    int q = kg - c * rs;
    int ry = q / p.s;
    int sx = q - ry * p.s;
    int iy = pc.iy0 + ry * p.dil_h;
    int ix = pc.ix0 + sx * p.dil_w;
    if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return pad;
    return x[(((size_t)pc.n * p.c + c) * p.h + iy) * p.w + ix];
}

// ---------------------------------------------------------------------------------------------
// INT8

struct TileI8 {
    signed char a[BM][BK + 4];  // +4: rows stay 4-byte aligned, fewer bank conflicts
    signed char b[BN][BK + 4];
};

__device__ __forceinline__ void load_tile_i8(const ConvParams& p, const signed char* __restrict__ x,
                                             const signed char* __restrict__ w, TileI8& t,
                                             const PixelCursor& pc, int m_local, int n0, int k0) {
    int tid = threadIdx.x;
    signed char pad = (signed char)p.in_zp;
#pragma unroll
    for (int i = 0; i < (BM * BK) / NTHREADS; ++i) {
        int kk = i * (NTHREADS / BM) + tid / BM;
        t.a[m_local][kk] = gather(p, x, pc, k0 + kk, pad);
    }
    // weights: one 16-byte row piece per thread (rows are 32-byte aligned, kpad % 32 == 0)
    int row = tid >> 1, half = tid & 1;
    int kout = n0 + row;
    int4 v = make_int4(0, 0, 0, 0);
    if (kout < p.k) v = *(const int4*)(w + (size_t)kout * p.kpad + k0 + half * 16);
    int* dst = (int*)&t.b[row][half * 16];
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
}

__device__ __forceinline__ void epilogue_i8(const ConvParams& p, const int* __restrict__ wsum,
                                            const float* __restrict__ mult,
                                            const float* __restrict__ bias, void* y, int m,
                                            int kk, int acc) {
    if (m >= p.n * p.oh * p.ow || kk >= p.k) return;
    int a = acc - p.in_zp * wsum[kk];
    float v = (float)a * mult[kk] + bias[kk];
    store_out(p, y, m, kk, v);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    conv_i8_imma(ConvParams p, const signed char* __restrict__ x, const signed char* __restrict__ w,
                 const int* __restrict__ wsum, const float* __restrict__ mult,
                 const float* __restrict__ bias, void* __restrict__ y) {
    __shared__ __align__(16) TileI8 t;
    int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    int g = lane >> 2, t4 = lane & 3;
    PixelCursor pc = pixel_cursor(p, m0 + tid % BM);
    int acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

    for (int k0 = 0; k0 < p.kpad; k0 += BK) {
        load_tile_i8(p, x, w, t, pc, tid % BM, n0, k0);
        __syncthreads();
        unsigned a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int r = wm + i * 16 + g;
            a[i][0] = *(const unsigned*)&t.a[r][t4 * 4];
            a[i][1] = *(const unsigned*)&t.a[r + 8][t4 * 4];
            a[i][2] = *(const unsigned*)&t.a[r][16 + t4 * 4];
            a[i][3] = *(const unsigned*)&t.a[r + 8][16 + t4 * 4];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int c = wn + j * 8 + g;
            b[j][0] = *(const unsigned*)&t.b[c][t4 * 4];
            b[j][1] = *(const unsigned*)&t.b[c][16 + t4 * 4];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
                mma_s8_m16n8k32(acc[i][j], a[i], b[j]);
        __syncthreads();
    }
    // c0,c1: row g, cols 2*t4, 2*t4+1; c2,c3: row g+8
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int m = m0 + wm + i * 16 + g + (e >> 1) * 8;
                int kk = n0 + wn + j * 8 + t4 * 2 + (e & 1);
                epilogue_i8(p, wsum, mult, bias, y, m, kk, acc[i][j][e]);
            }
}

// Same tiles on CUDA cores: each thread owns 4 pixels x 8 channels.
extern "C" __global__ void __launch_bounds__(NTHREADS)
    conv_i8_dp4a(ConvParams p, const signed char* __restrict__ x, const signed char* __restrict__ w,
                 const int* __restrict__ wsum, const float* __restrict__ mult,
                 const float* __restrict__ bias, void* __restrict__ y) {
    __shared__ __align__(16) TileI8 t;
    int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int tid = threadIdx.x;
    int tm = (tid & 15) * 4, tn = (tid >> 4) * 8;
    PixelCursor pc = pixel_cursor(p, m0 + tid % BM);
    int acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0;
    for (int k0 = 0; k0 < p.kpad; k0 += BK) {
        load_tile_i8(p, x, w, t, pc, tid % BM, n0, k0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 4) {
            int a[4], b[8];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = *(const int*)&t.a[tm + i][kk];
#pragma unroll
            for (int j = 0; j < 8; ++j) b[j] = *(const int*)&t.b[tn + j][kk];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
            epilogue_i8(p, wsum, mult, bias, y, m0 + tm + i, n0 + tn + j, acc[i][j]);
}

// ---------------------------------------------------------------------------------------------
// FP16 tensor cores

struct TileF16 {
    half_bits a[BM][BK + 8];  // +8 halves: 16-byte aligned rows, staggered banks
    half_bits b[BN][BK + 8];
};

extern "C" __global__ void __launch_bounds__(NTHREADS)
    conv_f16_mma(ConvParams p, const half_bits* __restrict__ x, const half_bits* __restrict__ w,
                 const float* __restrict__ bias, void* __restrict__ y) {
    __shared__ __align__(16) TileF16 t;
    int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    int g = lane >> 2, t4 = lane & 3;
    int m_local = tid % BM;
    PixelCursor pc = pixel_cursor(p, m0 + m_local);
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < p.kpad; k0 += BK) {
#pragma unroll
        for (int i = 0; i < (BM * BK) / NTHREADS; ++i) {
            int kk = i * (NTHREADS / BM) + tid / BM;
            t.a[m_local][kk] = gather(p, x, pc, k0 + kk, (half_bits)0);
        }
        // weights: 64 rows x 64 bytes = 256 16-byte pieces, two per thread
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int piece = tid + i * NTHREADS;
            int row = piece >> 2, quarter = piece & 3;
            int kout = n0 + row;
            int4 v = make_int4(0, 0, 0, 0);
            if (kout < p.k) v = *(const int4*)(w + (size_t)kout * p.kpad + k0 + quarter * 8);
            *(int4*)&t.b[row][quarter * 8] = v;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                int r = wm + i * 16 + g;
                a[i][0] = *(const unsigned*)&t.a[r][ks + t4 * 2];
                a[i][1] = *(const unsigned*)&t.a[r + 8][ks + t4 * 2];
                a[i][2] = *(const unsigned*)&t.a[r][ks + 8 + t4 * 2];
                a[i][3] = *(const unsigned*)&t.a[r + 8][ks + 8 + t4 * 2];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int c = wn + j * 8 + g;
                b[j][0] = *(const unsigned*)&t.b[c][ks + t4 * 2];
                b[j][1] = *(const unsigned*)&t.b[c][ks + 8 + t4 * 2];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    mma_f16_m16n8k16(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int m = m0 + wm + i * 16 + g + (e >> 1) * 8;
                int kk = n0 + wn + j * 8 + t4 * 2 + (e & 1);
                if (m < p.n * p.oh * p.ow && kk < p.k) store_out(p, y, m, kk, acc[i][j][e] + bias[kk]);
            }
}

// ---------------------------------------------------------------------------------------------
// Grouped and depthwise convolution, one thread per output element, taps in (c, r, s) order.

extern "C" __global__ void conv_direct_i8(ConvParams p, const signed char* __restrict__ x,
                                          const signed char* __restrict__ w,
                                          const int* __restrict__ wsum,
                                          const float* __restrict__ mult,
                                          const float* __restrict__ bias, void* __restrict__ y) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int plane = p.oh * p.ow;
    if (idx >= p.n * p.k * plane) return;
    int pix = idx % plane;
    int kk = (idx / plane) % p.k;
    int n = idx / (plane * p.k);
    int oy = pix / p.ow, ox = pix % p.ow;
    int cpg = p.c / p.groups, kpg = p.k / p.groups;
    int c0 = (kk / kpg) * cpg;
    const signed char* wr = w + (size_t)kk * p.kpad;
    int acc = 0;
    for (int c = 0; c < cpg; ++c)
        for (int ry = 0; ry < p.r; ++ry) {
            int iy = oy * p.stride_h - p.pad_h + ry * p.dil_h;
            for (int sx = 0; sx < p.s; ++sx) {
                int ix = ox * p.stride_w - p.pad_w + sx * p.dil_w;
                int v = p.in_zp;
                if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
                    v = x[(((size_t)n * p.c + c0 + c) * p.h + iy) * p.w + ix];
                acc += v * (int)wr[(c * p.r + ry) * p.s + sx];
            }
        }
    epilogue_i8(p, wsum, mult, bias, y, n * plane + pix, kk, acc);
}

__device__ __forceinline__ float load_float(const half_bits* x, size_t i) { return h2f(x[i]); }
__device__ __forceinline__ float load_float(const float* x, size_t i) { return x[i]; }

// FP16 or FP32 storage, f32 accumulation over the taps inside the image in (c, r, s) order:
// exactly the twin's order, so bit-exact. FP32 plans (the AFV discriminator, whose Fisher
// vector needs f32 activations) run every convolution here.
template <typename T>
__device__ void conv_direct_float(const ConvParams& p, const T* __restrict__ x,
                                  const T* __restrict__ w, const float* __restrict__ bias,
                                  void* __restrict__ y) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int plane = p.oh * p.ow;
    if (idx >= p.n * p.k * plane) return;
    int pix = idx % plane;
    int kk = (idx / plane) % p.k;
    int n = idx / (plane * p.k);
    int oy = pix / p.ow, ox = pix % p.ow;
    int cpg = p.c / p.groups, kpg = p.k / p.groups;
    int c0 = (kk / kpg) * cpg;
    const T* wr = w + (size_t)kk * p.kpad;
    float acc = 0.0f;
    for (int c = 0; c < cpg; ++c)
        for (int ry = 0; ry < p.r; ++ry) {
            int iy = oy * p.stride_h - p.pad_h + ry * p.dil_h;
            if (iy < 0 || iy >= p.h) continue;
            for (int sx = 0; sx < p.s; ++sx) {
                int ix = ox * p.stride_w - p.pad_w + sx * p.dil_w;
                if (ix < 0 || ix >= p.w) continue;
                acc += load_float(x, (((size_t)n * p.c + c0 + c) * p.h + iy) * p.w + ix) *
                       load_float(wr, (size_t)((c * p.r + ry) * p.s + sx));
            }
        }
    store_out(p, y, n * plane + pix, kk, acc + bias[kk]);
}

extern "C" __global__ void conv_direct_f16(ConvParams p, const half_bits* __restrict__ x,
                                           const half_bits* __restrict__ w,
                                           const float* __restrict__ bias, void* __restrict__ y) {
    conv_direct_float<half_bits>(p, x, w, bias, y);
}

extern "C" __global__ void conv_direct_f32(ConvParams p, const float* __restrict__ x,
                                           const float* __restrict__ w,
                                           const float* __restrict__ bias, void* __restrict__ y) {
    conv_direct_float<float>(p, x, w, bias, y);
}
