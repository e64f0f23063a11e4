// The BEV view transform ("pull" in SkyEye's terms, in the spirit of CUDA-BEVFusion's BEVPool):
// every (channel, level, BEV cell) gathers four bilinear taps from one front-view feature
// plane through bevrt-calib's SamplingTable (calib/src/bev.rs documents the layout: 32-byte
// entries of 4 u32 indices then 4 f32 weights, entry e = (level*grid_h + row)*grid_w + col;
// invalid entries have weight 0 and index 0, so the gather is unconditional).
// GPU twin of bevrt_calib::view_transform; output (C*Z, grid_h, grid_w), channel c*Z + level.
// Features may be f32 or f16; accumulation is f32.
#include "common.cuh"

struct SampleTap {
    unsigned int idx[4];
    float w[4];
};

template <typename T>
__device__ __forceinline__ float ld(const T* p, unsigned int i);
template <>
__device__ __forceinline__ float ld<float>(const float* p, unsigned int i) { return __ldg(p + i); }
template <>
__device__ __forceinline__ float ld<half_bits>(const half_bits* p, unsigned int i) {
    return h2f(p[i]);
}

template <typename T>
__device__ void bev_pool(const SampleTap* __restrict__ taps, const T* __restrict__ feat,
                         float* __restrict__ out, int channels, int levels, int cells,
                         int plane) {
    // grid: x over cells*levels entries, y over channels
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    int c = blockIdx.y;
    if (e >= cells * levels || c >= channels) return;
    SampleTap t = taps[e];
    const T* f = feat + (size_t)c * plane;
    float v = t.w[0] * ld(f, t.idx[0]) + t.w[1] * ld(f, t.idx[1]) + t.w[2] * ld(f, t.idx[2]) +
              t.w[3] * ld(f, t.idx[3]);
    // entry e = level*cells + cell -> out channel c*levels + level
    int level = e / cells, cell = e - level * cells;
    out[((size_t)c * levels + level) * cells + cell] = v;
}

extern "C" __global__ void bev_pool_f32(const SampleTap* taps, const float* feat, float* out,
                                        int channels, int levels, int cells, int plane) {
    bev_pool<float>(taps, feat, out, channels, levels, cells, plane);
}

extern "C" __global__ void bev_pool_f16(const SampleTap* taps, const half_bits* feat,
                                        float* out, int channels, int levels, int cells,
                                        int plane) {
    bev_pool<half_bits>(taps, feat, out, channels, levels, cells, plane);
}
