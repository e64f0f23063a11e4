// Adversarial Fisher Vectors: the per-example score of a discriminator's last two layers from
// its forward activations, and the Fisher normalisation. GPU twin of
// runtime/src/afv.rs afv_score + fisher_normalise (same layout of U, R = regions:
// [a2 (C2*H2*W2), dD/dW2 per cell (R*R * C2*C1*K*K), dD/db2 per cell (R*R * C2)]).
//
// afv_delta: one thread per z2 element: a2 = lrelu(z2) into U, delta = w3 * lrelu'(z2).
// afv_conv_grad: one thread per (cell, o, i, ky, kx) of dW2, summing delta * a1-patch over
//   the cell's conv2 output positions (rows ceil(cy*H2/R) .. ceil((cy+1)*H2/R), columns
//   likewise); threads with i == 0 && ky == kx == 0 also write the cell's dD/db2[o].
// fisher_normalise: one block; (u - mean) * rsqrt(diag + eps), optional signed sqrt, then
//   the block's L2 norm (shared-memory reduction) divides every component.

extern "C" __global__ void afv_delta(const float* __restrict__ z2, const float* __restrict__ w3,
                                     float slope, float* __restrict__ u,
                                     float* __restrict__ delta, int n2) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n2) return;
    float z = z2[i];
    bool pos = z > 0.0f;
    u[i] = pos ? z : z * slope;
    delta[i] = w3[i] * (pos ? 1.0f : slope);
}

extern "C" __global__ void afv_conv_grad(const float* __restrict__ a1,
                                         const float* __restrict__ delta, float* __restrict__ u,
                                         int c1, int h1, int w1, int c2, int h2, int w2, int k,
                                         int stride, int pad, int regions) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int per_o = c1 * k * k;
    int per_cell = c2 * per_o;
    if (t >= regions * regions * per_cell) return;
    int q = t / per_cell;
    int o = (t % per_cell) / per_o;
    int r = t % per_o;
    int y0 = (q / regions * h2 + regions - 1) / regions;
    int y1 = ((q / regions + 1) * h2 + regions - 1) / regions;
    int x0 = (q % regions * w2 + regions - 1) / regions;
    int x1 = ((q % regions + 1) * w2 + regions - 1) / regions;
    int i = r / (k * k);
    int ky = (r / k) % k;
    int kx = r % k;
    const float* d = delta + (size_t)o * h2 * w2;
    const float* a = a1 + (size_t)i * h1 * w1;
    float acc = 0.0f;
    for (int y = y0; y < y1; ++y) {
        int iy = y * stride + ky - pad;
        if (iy < 0 || iy >= h1) continue;
        for (int x = x0; x < x1; ++x) {
            int ix = x * stride + kx - pad;
            if (ix < 0 || ix >= w1) continue;
            acc += d[y * w2 + x] * a[iy * w1 + ix];
        }
    }
    size_t n2 = (size_t)c2 * h2 * w2;
    u[n2 + t] = acc;
    if (r == 0) {
        float s = 0.0f;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) s += d[y * w2 + x];
        u[n2 + (size_t)regions * regions * per_cell + (size_t)q * c2 + o] = s;
    }
}

// Launch with one block of 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    fisher_normalise(float* __restrict__ v, const float* __restrict__ mean,
                                            const float* __restrict__ diag, float eps, int power,
                                            int l2, int n) {
    __shared__ float partial[256];
    float sq = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float x = (v[i] - mean[i]) * rsqrtf(diag[i] + eps);
        if (power) x = copysignf(sqrtf(fabsf(x)), x);
        v[i] = x;
        sq += x * x;
    }
    partial[threadIdx.x] = sq;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (!l2) return;
    float norm = sqrtf(partial[0]);
    if (norm <= 0.0f) return;
    float inv = 1.0f / norm;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v[i] *= inv;
}
