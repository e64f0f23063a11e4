// Everything between convolutions: activations, broadcasting binary ops, pooling, resize,
// softmax, channel argmax, Q/DQ and casts, and the copy that writes a Concat input into its
// slice. Activations are FP16 (raw bits, f32 arithmetic); int8 appears only at Q/DQ. FP32
// plans (the AFV discriminator) have f32 variants of the elementwise ops they use.
// CPU twins: bevrt_kernels::reference (same f32 operations in the same order; only expf-based
// results — sigmoid, silu, softmax — may differ from the CPU in the last bits).
// One thread per output element unless stated.
#include "common.cuh"

extern "C" __global__ void unary_f16(const half_bits* __restrict__ x, half_bits* __restrict__ y,
                                     int n, int act, float a, float b) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f2h(activate(h2f(x[i]), act, a, b));
}

extern "C" __global__ void unary_f32(const float* __restrict__ x, float* __restrict__ y, int n,
                                     int act, float a, float b) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = activate(x[i], act, a, b);
}

// Broadcasting: shapes are right-aligned to 4 dims; a stride of 0 repeats an operand.
struct BinaryParams {
    int n;
    int dims[4];
    int a_strides[4];
    int b_strides[4];
    int op;  // 0 add, 1 sub, 2 mul, 3 div, 4 scale-shift: a * b[ib] + b[ib + shift_offset]
             // (op 4: b is f32 in both the f16 and the f32 kernel)
    int act;
    float act_a, act_b;
    int shift_offset;
};

__device__ __forceinline__ float binary_op(int op, float u, float v) {
    switch (op) {
    case 0: return u + v;
    case 1: return u - v;
    case 2: return u * v;
    default: return u / v;
    }
}

// Element i's offsets into a and b through the broadcast strides.
__device__ __forceinline__ void binary_offsets(const BinaryParams& p, int i, int& ia, int& ib) {
    int rem = i;
    ia = 0;
    ib = 0;
#pragma unroll
    for (int d = 3; d >= 0; --d) {
        int coord = rem % p.dims[d];
        rem /= p.dims[d];
        ia += coord * p.a_strides[d];
        ib += coord * p.b_strides[d];
    }
}

extern "C" __global__ void binary_f16(BinaryParams p, const half_bits* __restrict__ a,
                                      const half_bits* __restrict__ b, half_bits* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    int ia, ib;
    binary_offsets(p, i, ia, ib);
    // scale-shift factors are f32 even here: a BatchNormalization's shift β − μ·scale is
    // often the difference of two large terms, which FP16 factors would round away
    const float* f = reinterpret_cast<const float*>(b);
    float r = p.op == 4 ? h2f(a[ia]) * f[ib] + f[ib + p.shift_offset]
                        : binary_op(p.op, h2f(a[ia]), h2f(b[ib]));
    y[i] = f2h(activate(r, p.act, p.act_a, p.act_b));
}

extern "C" __global__ void binary_f32(BinaryParams p, const float* __restrict__ a,
                                      const float* __restrict__ b, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    int ia, ib;
    binary_offsets(p, i, ia, ib);
    float r = p.op == 4 ? a[ia] * b[ib] + b[ib + p.shift_offset] : binary_op(p.op, a[ia], b[ib]);
    y[i] = activate(r, p.act, p.act_a, p.act_b);
}

// A binary op of two int8 tensors into int8 (the twin: reference::binary_i8): a QDQ graph's
// DequantizeLinear x2 -> op (-> activation) -> QuantizeLinear in one pass over the codes.
extern "C" __global__ void binary_i8(BinaryParams p, const signed char* __restrict__ a,
                                     const signed char* __restrict__ b,
                                     signed char* __restrict__ y, float sa, int za, float sb,
                                     int zb, float sy, int zy) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    int ia, ib;
    binary_offsets(p, i, ia, ib);
    float u = (float)((int)a[ia] - za) * sa;
    float v = (float)((int)b[ib] - zb) * sb;
    y[i] = quantize_i8(activate(binary_op(p.op, u, v), p.act, p.act_a, p.act_b), sy, zy);
}

// A per-channel affine map of int8 codes into int8 (the twin: reference::scale_shift_i8): a QDQ
// graph's DequantizeLinear -> BatchNormalization (-> activation) -> QuantizeLinear in one pass;
// b holds the f32 scales, then the shifts.
extern "C" __global__ void scale_shift_i8(BinaryParams p, const signed char* __restrict__ a,
                                          const float* __restrict__ b,
                                          signed char* __restrict__ y, float sa, int za,
                                          float sy, int zy) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    int ia, ib;
    binary_offsets(p, i, ia, ib);
    float u = (float)((int)a[ia] - za) * sa;
    float r = u * b[ib] + b[ib + p.shift_offset];
    y[i] = quantize_i8(activate(r, p.act, p.act_a, p.act_b), sy, zy);
}

struct PoolParams {
    int n, c, h, w, oh, ow;
    int kh, kw, stride_h, stride_w, pad_h, pad_w;
    int mode;               // 0 max, 1 average
    int count_include_pad;  // average: divide by kh*kw instead of the taps inside the image
};

extern "C" __global__ void pool_f16(PoolParams p, const half_bits* __restrict__ x,
                                    half_bits* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int plane = p.oh * p.ow;
    if (i >= p.n * p.c * plane) return;
    int nc = i / plane, pix = i % plane;
    int oy = pix / p.ow, ox = pix % p.ow;
    const half_bits* xp = x + (size_t)nc * p.h * p.w;
    float acc = p.mode == 0 ? __int_as_float(0xff800000) : 0.0f;
    int taps = 0;
    for (int ry = 0; ry < p.kh; ++ry) {
        int iy = oy * p.stride_h - p.pad_h + ry;
        if (iy < 0 || iy >= p.h) continue;
        for (int sx = 0; sx < p.kw; ++sx) {
            int ix = ox * p.stride_w - p.pad_w + sx;
            if (ix < 0 || ix >= p.w) continue;
            float v = h2f(xp[iy * p.w + ix]);
            // max: ties and NaN keep the running value (as the twin)
            acc = p.mode == 0 ? (v > acc ? v : acc) : acc + v;
            ++taps;
        }
    }
    if (p.mode == 1) acc = acc / (float)(p.count_include_pad ? p.kh * p.kw : taps);
    y[i] = f2h(acc);
}

// Max pooling of int8 codes (the twin: reference::pool_max_i8): quantization is monotone, so
// the max of the codes is the code of the max and a QDQ graph's MaxPool needs no float.
extern "C" __global__ void pool_max_i8(PoolParams p, const signed char* __restrict__ x,
                                       signed char* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int plane = p.oh * p.ow;
    if (i >= p.n * p.c * plane) return;
    int nc = i / plane, pix = i % plane;
    int oy = pix / p.ow, ox = pix % p.ow;
    const signed char* xp = x + (size_t)nc * p.h * p.w;
    int acc = -128;
    for (int ry = 0; ry < p.kh; ++ry) {
        int iy = oy * p.stride_h - p.pad_h + ry;
        if (iy < 0 || iy >= p.h) continue;
        for (int sx = 0; sx < p.kw; ++sx) {
            int ix = ox * p.stride_w - p.pad_w + sx;
            if (ix < 0 || ix >= p.w) continue;
            int v = xp[iy * p.w + ix];
            acc = v > acc ? v : acc;
        }
    }
    y[i] = (signed char)acc;
}

struct ResizeParams {
    int n, c, h, w, oh, ow;
    int mode;          // 0 nearest, 1 linear
    int coord;         // 0 half_pixel, 1 align_corners, 2 asymmetric, 3 pytorch_half_pixel
    int nearest_mode;  // 0 round_prefer_floor, 1 floor, 2 ceil, 3 round_prefer_ceil
    float scale_h, scale_w;  // output / input
};

__device__ __forceinline__ float src_coord(int o, int in, int out, float scale, int coord) {
    switch (coord) {
    case 0: return ((float)o + 0.5f) / scale - 0.5f;
    // ONNX measures the output length as in * scale, unrounded (its reference does)
    case 1: return out > 1 ? (float)o * (float)(in - 1) / ((float)in * scale - 1.0f) : 0.0f;
    case 2: return (float)o / scale;
    default: return out > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
    }
}

__device__ __forceinline__ int nearest_index(float v, int mode, int in) {
    float r;
    switch (mode) {
    case 0: r = (v - floorf(v) == 0.5f) ? floorf(v) : rintf(v); break;
    case 1: r = floorf(v); break;
    case 2: r = ceilf(v); break;
    default: r = (v - floorf(v) == 0.5f) ? ceilf(v) : rintf(v); break;
    }
    int i = (int)r;
    return i < 0 ? 0 : (i >= in ? in - 1 : i);
}

extern "C" __global__ void resize_f16(ResizeParams p, const half_bits* __restrict__ x,
                                      half_bits* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int plane = p.oh * p.ow;
    if (i >= p.n * p.c * plane) return;
    int nc = i / plane, pix = i % plane;
    int oy = pix / p.ow, ox = pix % p.ow;
    const half_bits* xp = x + (size_t)nc * p.h * p.w;
    float sy = src_coord(oy, p.h, p.oh, p.scale_h, p.coord);
    float sx = src_coord(ox, p.w, p.ow, p.scale_w, p.coord);
    if (p.mode == 0) {
        y[i] = xp[nearest_index(sy, p.nearest_mode, p.h) * p.w +
                  nearest_index(sx, p.nearest_mode, p.w)];
        return;
    }
    sy = fminf(fmaxf(sy, 0.0f), (float)(p.h - 1));
    sx = fminf(fmaxf(sx, 0.0f), (float)(p.w - 1));
    int y0 = (int)sy, x0 = (int)sx;
    int y1 = y0 + 1 < p.h ? y0 + 1 : y0, x1 = x0 + 1 < p.w ? x0 + 1 : x0;
    float fy = sy - (float)y0, fx = sx - (float)x0;
    float top = h2f(xp[y0 * p.w + x0]) * (1.0f - fx) + h2f(xp[y0 * p.w + x1]) * fx;
    float bot = h2f(xp[y1 * p.w + x0]) * (1.0f - fx) + h2f(xp[y1 * p.w + x1]) * fx;
    y[i] = f2h(top * (1.0f - fy) + bot * fy);
}

// Softmax over an axis of length `len`, elements `inner` apart; one thread per (outer, inner).
extern "C" __global__ void softmax_f16(const half_bits* __restrict__ x, half_bits* __restrict__ y,
                                       int outer, int len, int inner) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= outer * inner) return;
    size_t base = (size_t)(i / inner) * len * inner + i % inner;
    float mx = __int_as_float(0xff800000);
    for (int j = 0; j < len; ++j) {
        float v = h2f(x[base + (size_t)j * inner]);
        mx = v > mx ? v : mx;
    }
    float sum = 0.0f;
    for (int j = 0; j < len; ++j) sum += expf(h2f(x[base + (size_t)j * inner]) - mx);
    for (int j = 0; j < len; ++j)
        y[base + (size_t)j * inner] = f2h(expf(h2f(x[base + (size_t)j * inner]) - mx) / sum);
}

// Per-cell argmax over `n_classes` planes (ties take the lower class), like bev_argmax.
extern "C" __global__ void argmax_f16(const half_bits* __restrict__ x,
                                      unsigned char* __restrict__ classes, int n_classes,
                                      int cells) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cells) return;
    int best = 0;
    float bv = h2f(x[i]);
    for (int c = 1; c < n_classes; ++c) {
        float v = h2f(x[(size_t)c * cells + i]);
        if (v > bv) {
            bv = v;
            best = c;
        }
    }
    classes[i] = (unsigned char)best;
}

extern "C" __global__ void quantize_f16(const half_bits* __restrict__ x,
                                        signed char* __restrict__ y, int n, float s, int zp) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = quantize_i8(h2f(x[i]), s, zp);
}

extern "C" __global__ void quantize_f32(const float* __restrict__ x, signed char* __restrict__ y,
                                        int n, float s, int zp) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = quantize_i8(x[i], s, zp);
}

extern "C" __global__ void dequantize_f16(const signed char* __restrict__ x,
                                          half_bits* __restrict__ y, int n, float s, int zp) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f2h((float)((int)x[i] - zp) * s);
}

extern "C" __global__ void cast_f32_f16(const float* __restrict__ x, half_bits* __restrict__ y,
                                        int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f2h(x[i]);
}

extern "C" __global__ void cast_f16_f32(const half_bits* __restrict__ x, float* __restrict__ y,
                                        int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = h2f(x[i]);
}

// Concat input into its slice: `outer` blocks of `src_inner` elements land `dst_inner` apart,
// starting `dst_offset` into each block of the output.
extern "C" __global__ void copy_slice_f16(const half_bits* __restrict__ x,
                                          half_bits* __restrict__ y, int outer, int src_inner,
                                          int dst_inner, int dst_offset) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= outer * src_inner) return;
    int o = i / src_inner, j = i % src_inner;
    y[(size_t)o * dst_inner + dst_offset + j] = x[i];
}

// Transpose: a data move, so one kernel per element width (f32, f16, int8). Output element i,
// its coordinates over the right-aligned output dims, reads the input through the permuted
// input strides.
struct TransposeParams {
    int n;
    int dims[6];
    int in_strides[6];
};

template <typename T>
__device__ __forceinline__ void transpose_any(const TransposeParams& p, const T* __restrict__ x,
                                              T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    int rem = i, at = 0;
#pragma unroll
    for (int d = 5; d >= 0; --d) {
        at += (rem % p.dims[d]) * p.in_strides[d];
        rem /= p.dims[d];
    }
    y[i] = x[at];
}

extern "C" __global__ void transpose_b32(TransposeParams p, const unsigned int* __restrict__ x,
                                         unsigned int* __restrict__ y) {
    transpose_any(p, x, y);
}
extern "C" __global__ void transpose_b16(TransposeParams p, const half_bits* __restrict__ x,
                                         half_bits* __restrict__ y) {
    transpose_any(p, x, y);
}
extern "C" __global__ void transpose_b8(TransposeParams p, const signed char* __restrict__ x,
                                        signed char* __restrict__ y) {
    transpose_any(p, x, y);
}
