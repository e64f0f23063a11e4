// Per-cell argmax over class planes and colourising the class map for the sinks.
// GPU twins of runtime/src/postprocess.rs bev_argmax and colourise: ties take the lower class
// index; class indices outside the palette (255 = unknown) are drawn black.

extern "C" __global__ void bev_argmax(const float* __restrict__ logits,
                                      unsigned char* __restrict__ classes, int n_classes,
                                      int cells) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cells) return;
    int best = 0;
    float bv = logits[i];
    for (int c = 1; c < n_classes; ++c) {
        float v = logits[(size_t)c * cells + i];
        if (v > bv) {
            bv = v;
            best = c;
        }
    }
    classes[i] = (unsigned char)best;
}

// palette: n_colors * 3 bytes RGB
extern "C" __global__ void colourise(const unsigned char* __restrict__ classes,
                                     const unsigned char* __restrict__ palette, int n_colors,
                                     unsigned char* __restrict__ rgb, int cells) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cells) return;
    int c = classes[i];
    unsigned char r = 0, g = 0, b = 0;
    if (c < n_colors) {
        r = palette[c * 3];
        g = palette[c * 3 + 1];
        b = palette[c * 3 + 2];
    }
    rgb[i * 3] = r;
    rgb[i * 3 + 1] = g;
    rgb[i * 3 + 2] = b;
}
