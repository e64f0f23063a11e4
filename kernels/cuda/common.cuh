// Shared device helpers. NVRTC compiles each kernel file with this directory on the include
// path (kernels/src/nvrtc.rs).
#pragma once

__device__ __forceinline__ float clamp255(float v) { return fminf(fmaxf(v, 0.0f), 255.0f); }

// IEEE binary16 values are passed as their raw bits: NVRTC alone (no toolkit headers) compiles
// every kernel. Conversions round to nearest even, like half::f16::from_f32 on the CPU side; a
// NaN becomes the canonical NaN (0x7fff in f16, 0x7fffffff in f32), as the CPU twins do.
typedef unsigned short half_bits;

// Every inline PTX instruction of the kernels lives here, behind named functions. The CPU
// emulation (kernels/emu) compiles the same .cu files as C++ with BEVRT_EMU defined and
// supplies these functions from the PTX ISA manual instead (cvt rounding, mma fragments).
#ifndef BEVRT_EMU
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

// Warp-wide D = A * B + C on tensor cores, A 16x32 s8 (row), B 32x8 s8 (col), C/D s32; each
// thread passes its fragment registers (PTX ISA, "Matrix Fragments for mma.m16n8k32").
__device__ __forceinline__ void mma_s8_m16n8k32(int (&c)[4], const unsigned (&a)[4],
                                                const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Warp-wide D = A * B + C, A 16x16 f16 (row), B 16x8 f16 (col), C/D f32 ("Matrix Fragments
// for mma.m16n8k16 with floating point type").
__device__ __forceinline__ void mma_f16_m16n8k16(float (&c)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Activations fused into producers (bevrt_kernels::reference::activate is the CPU twin).
// Only exactly-rounded operations: with --fmad=false every result equals the CPU's bit for bit.
// Clamps are explicit comparisons, not fminf/fmaxf: those leave max(-0, +0) to the
// implementation and drop NaN, where these keep -0 and let NaN through (as ONNX Relu / Clip
// on NaN do), the same on the GPU, in the emulation and in the twin.
// 0 none, 1 relu, 2 clip(a, b), 3 hardsigmoid(alpha a, beta b), 4 hardswish,
// 5 sigmoid, 6 silu (5 and 6 use expf: within 2 ulp of the CPU, not bit-exact),
// 7 leaky relu (slope a).
// min(max(y, lo), hi) in that order, as ONNX Clip defines it (lo > hi gives hi).
__device__ __forceinline__ float clip_f(float y, float lo, float hi) {
    float t = y < lo ? lo : y;
    return t > hi ? hi : t;
}
__device__ __forceinline__ float activate(float y, int act, float a, float b) {
    switch (act) {
    case 1: return y < 0.0f ? 0.0f : y;
    case 2: return clip_f(y, a, b);
    case 3: return clip_f(a * y + b, 0.0f, 1.0f);
    case 4: return y * clip_f(y / 6.0f + 0.5f, 0.0f, 1.0f);
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
