// Shared device helpers. NVRTC compiles each kernel file with this directory on the include
// path (kernels/src/nvrtc.rs).
#pragma once

__device__ __forceinline__ float clamp255(float v) { return fminf(fmaxf(v, 0.0f), 255.0f); }

// IEEE binary16 values are passed as their raw bits: NVRTC alone (no toolkit headers) compiles
// every kernel. Conversions round to nearest even, like half::f16::from_f32 on the CPU side.
typedef unsigned short half_bits;
__device__ __forceinline__ float h2f(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ half_bits f2h(float f) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Activations fused into producers (bevrt_kernels::reference::activate is the CPU twin).
// Only exactly-rounded operations: with --fmad=false every result equals the CPU's bit for bit.
// 0 none, 1 relu, 2 clip(a, b), 3 hardsigmoid(alpha a, beta b), 4 hardswish,
// 5 sigmoid, 6 silu (5 and 6 use expf: within 2 ulp of the CPU, not bit-exact),
// 7 leaky relu (slope a).
__device__ __forceinline__ float activate(float y, int act, float a, float b) {
    switch (act) {
    case 1: return fmaxf(y, 0.0f);
    case 2: return fminf(fmaxf(y, a), b);
    case 3: return fmaxf(0.0f, fminf(1.0f, a * y + b));
    case 4: return y * fmaxf(0.0f, fminf(1.0f, y / 6.0f + 0.5f));
    case 5: return 1.0f / (1.0f + expf(-y));
    case 6: return y / (1.0f + expf(-y));
    case 7: return y > 0.0f ? y : a * y;
    default: return y;
    }
}

// ONNX QuantizeLinear into the signed domain: clamp(round_half_even(y / s) + zp, -128, 127).
// uint8 tensors are stored shifted by -128 (zero point too), so one int8 path serves both.
__device__ __forceinline__ signed char quantize_i8(float y, float s, int zp) {
    float r = rintf(y / s) + (float)zp;
    return (signed char)(int)fminf(fmaxf(r, -128.0f), 127.0f);
}
