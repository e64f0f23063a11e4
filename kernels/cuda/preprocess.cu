// Frame to model input in one pass: colour conversion, bilinear resize (half-pixel centres) or
// a per-pixel source map (undistortion), normalisation, and f32 / f16 / int8 output.
// GPU twin of runtime/src/preprocess.rs (PreprocessPlan::run, run_f16, run_i8): same taps, same
// BT.601 limited-range matrix, conversion per tap before interpolation, the same f32 operations
// in the same order; compiled with --fmad=false, so results are bit-identical.
// One thread per output pixel; writes every channel of it.
//
// fmt: 0 RGB8, 1 BGR8, 2 GRAY8, 3 YUYV, 4 NV12
// order: 0 RGB, 1 BGR, 2 GRAY (model channel order); layout: 0 NCHW, 1 NHWC
#include "common.cuh"

__device__ __forceinline__ float3 yuv_to_rgb(float y, float u, float v) {
    float c = 1.164f * (y - 16.0f);
    float d = u - 128.0f;
    float e = v - 128.0f;
    return make_float3(clamp255(c + 1.596f * e), clamp255(c - 0.392f * d - 0.813f * e),
                       clamp255(c + 2.017f * d));
}

__device__ __forceinline__ float3 fetch_rgb(const unsigned char* __restrict__ src, int fmt, int w,
                                            int h, int x, int y) {
    switch (fmt) {
    case 0: {
        const unsigned char* p = src + (y * w + x) * 3;
        return make_float3(p[0], p[1], p[2]);
    }
    case 1: {
        const unsigned char* p = src + (y * w + x) * 3;
        return make_float3(p[2], p[1], p[0]);
    }
    case 2: {
        float g = src[y * w + x];
        return make_float3(g, g, g);
    }
    case 3: {
        int stride = ((w + 1) / 2) * 4;
        const unsigned char* p = src + y * stride + (x / 2) * 4;
        return yuv_to_rgb(p[(x & 1) * 2], p[1], p[3]);
    }
    default: {
        int uv_stride = ((w + 1) / 2) * 2;
        const unsigned char* uv = src + w * h + (y / 2) * uv_stride + (x / 2) * 2;
        return yuv_to_rgb(src[y * w + x], uv[0], uv[1]);
    }
    }
}

struct PreprocessParams {
    int in_w, in_h, out_w, out_h;
    int fmt, order, layout;
    float scale[3];  // 1 / (255 std)
    float bias[3];   // -mean / std
    float q_scale;   // int8 output: quantize_i8(v, q_scale, q_zp) (common.cuh)
    int q_zp;
};

struct StoreF32 {
    typedef float T;
    __device__ static float store(float v, const PreprocessParams&) { return v; }
};
struct StoreF16 {
    typedef half_bits T;  // IEEE binary16 bits
    __device__ static half_bits store(float v, const PreprocessParams&) { return f2h(v); }
};
// Rounded and clamped in float (quantize_i8), so no integer add can overflow, and NaN gives
// -128 as in the CPU twin.
struct StoreI8 {
    typedef signed char T;
    __device__ static signed char store(float v, const PreprocessParams& p) {
        return quantize_i8(v, p.q_scale, p.q_zp);
    }
};

// map: nullptr for the plain resize, else out_w*out_h (x, y) frame positions
template <typename S>
__device__ void preprocess(const unsigned char* __restrict__ src, typename S::T* __restrict__ dst,
                           const float* __restrict__ map, const PreprocessParams& p) {
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= p.out_w || oy >= p.out_h) return;
    float sx, sy;
    if (map) {
        sx = map[(oy * p.out_w + ox) * 2];
        sy = map[(oy * p.out_w + ox) * 2 + 1];
    } else {
        sx = (ox + 0.5f) * ((float)p.in_w / (float)p.out_w) - 0.5f;
        sy = (oy + 0.5f) * ((float)p.in_h / (float)p.out_h) - 0.5f;
    }
    sx = fminf(fmaxf(sx, 0.0f), (float)(p.in_w - 1));
    sy = fminf(fmaxf(sy, 0.0f), (float)(p.in_h - 1));
    int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
    int x1 = min(x0 + 1, p.in_w - 1), y1 = min(y0 + 1, p.in_h - 1);
    float wx = sx - x0, wy = sy - y0;
    float3 a = fetch_rgb(src, p.fmt, p.in_w, p.in_h, x0, y0);
    float3 b = fetch_rgb(src, p.fmt, p.in_w, p.in_h, x1, y0);
    float3 c = fetch_rgb(src, p.fmt, p.in_w, p.in_h, x0, y1);
    float3 d = fetch_rgb(src, p.fmt, p.in_w, p.in_h, x1, y1);
    float3 top = make_float3(a.x + (b.x - a.x) * wx, a.y + (b.y - a.y) * wx, a.z + (b.z - a.z) * wx);
    float3 bot = make_float3(c.x + (d.x - c.x) * wx, c.y + (d.y - c.y) * wx, c.z + (d.z - c.z) * wx);
    float rgb[3] = {top.x + (bot.x - top.x) * wy, top.y + (bot.y - top.y) * wy,
                    top.z + (bot.z - top.z) * wy};
    float vals[3];
    int ch;
    if (p.order == 0) {
        vals[0] = rgb[0]; vals[1] = rgb[1]; vals[2] = rgb[2]; ch = 3;
    } else if (p.order == 1) {
        vals[0] = rgb[2]; vals[1] = rgb[1]; vals[2] = rgb[0]; ch = 3;
    } else {
        vals[0] = 0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2]; ch = 1;
    }
    int pix = oy * p.out_w + ox;
    int plane = p.out_w * p.out_h;
    for (int k = 0; k < ch; ++k) {
        typename S::T v = S::store(vals[k] * p.scale[k] + p.bias[k], p);
        if (p.layout == 0) dst[k * plane + pix] = v;
        else dst[pix * ch + k] = v;
    }
}

extern "C" __global__ void preprocess_f32(const unsigned char* src, float* dst, const float* map,
                                          PreprocessParams p) {
    preprocess<StoreF32>(src, dst, map, p);
}
extern "C" __global__ void preprocess_f16(const unsigned char* src, unsigned short* dst,
                                          const float* map, PreprocessParams p) {
    preprocess<StoreF16>(src, dst, map, p);
}
extern "C" __global__ void preprocess_i8(const unsigned char* src, signed char* dst,
                                         const float* map, PreprocessParams p) {
    preprocess<StoreI8>(src, dst, map, p);
}
