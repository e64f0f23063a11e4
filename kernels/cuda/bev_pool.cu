// The BEV view transform ("pull" in SkyEye's terms, in the spirit of CUDA-BEVFusion's BEVPool):
// every (channel, level, BEV cell) gathers four bilinear taps from one front-view feature
// plane through bevrt-calib's SamplingTable (calib/src/bev.rs documents the layout: 32-byte
// entries of 4 u32 indices then 4 f32 weights, entry e = (level*grid_h + row)*grid_w + col;
// invalid entries have weight 0 and index 0, so the gather is unconditional).
// GPU twin of bevrt_calib::view_transform; output (C*Z, grid_h, grid_w), channel c*Z + level.
// Features may be f32 or f16; accumulation is f32.
//
// The depth-weighted lift (grids with depth bins; calib/src/bev.rs "Depth-weighted lift") is two
// launches: depth_softmax_f32 turns the encoder's D depth logits per pixel into depth weights
// D * softmax (CPU twin bevrt_calib::bev::depth_softmax), then bev_lift_f32 gathers the C context
// channels with every tap weight times the depth weight of the entry's bin at the tap's pixel
// (CPU twin bevrt_calib::bev::{depth_weighted_taps, gather_channels}; together bevrt_calib::lift).
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

// One thread per feature pixel: dw[k*plane + p] = bins * exp(l_k - max) / sum_j exp(l_j - max),
// the same max-shifted f32 sequence as the CPU twin (expf: within 2 ulp, not bit-exact).
extern "C" __global__ void depth_softmax_f32(const float* __restrict__ logits,
                                             float* __restrict__ dw, int bins, int plane) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= plane) return;
    float m = __int_as_float(0xff800000);  // -inf
    for (int k = 0; k < bins; ++k) m = fmaxf(m, logits[(size_t)k * plane + p]);
    float sum = 0.0f;
    for (int k = 0; k < bins; ++k) {
        float e = expf(logits[(size_t)k * plane + p] - m);
        dw[(size_t)k * plane + p] = e;
        sum += e;
    }
    float inv = (float)bins / sum;
    for (int k = 0; k < bins; ++k) dw[(size_t)k * plane + p] *= inv;
}

// grid as bev_pool: x over entries, y over the C context channels. `bin_of` holds one depth bin
// per entry (0 for invalid entries, whose weights are 0); `dw` is depth_softmax_f32's output.
extern "C" __global__ void bev_lift_f32(const SampleTap* __restrict__ taps,
                                        const unsigned int* __restrict__ bin_of,
                                        const float* __restrict__ dw,
                                        const float* __restrict__ feat, float* __restrict__ out,
                                        int channels, int levels, int cells, int plane) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    int c = blockIdx.y;
    if (e >= cells * levels || c >= channels) return;
    SampleTap t = taps[e];
    const float* d = dw + (size_t)bin_of[e] * plane;
    float w0 = t.w[0] * __ldg(d + t.idx[0]), w1 = t.w[1] * __ldg(d + t.idx[1]);
    float w2 = t.w[2] * __ldg(d + t.idx[2]), w3 = t.w[3] * __ldg(d + t.idx[3]);
    const float* f = feat + (size_t)c * plane;
    float v = w0 * __ldg(f + t.idx[0]) + w1 * __ldg(f + t.idx[1]) + w2 * __ldg(f + t.idx[2]) +
              w3 * __ldg(f + t.idx[3]);
    int level = e / cells, cell = e - level * cells;
    out[((size_t)c * levels + level) * cells + cell] = v;
}
