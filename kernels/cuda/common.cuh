// Shared device helpers. NVRTC compiles each kernel file with this directory on the include
// path (kernels/src/nvrtc.rs).
#pragma once

__device__ __forceinline__ float clamp255(float v) { return fminf(fmaxf(v, 0.0f), 255.0f); }
