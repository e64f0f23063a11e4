// CUDA C as host C++: the part of the CUDA language and device library that bevrt's kernels
// use, so the real kernels/cuda/*.cu sources compile with g++ and run on a CPU. The build
// (kernels/emu/build.rs) force-includes this header before each .cu file.
//
// Execution model (cpp/emu.cpp): the blocks of a grid run one after another, last block
// first (CUDA promises no order); inside a block
// every CUDA thread is an OS thread when the kernel synchronises (__syncthreads, mma.sync),
// else the threads run one after another on the caller's thread. Shared memory is a
// function-local static: with one block at a time that is exactly one block's shared memory.
//
// The PTX the kernels use (cvt between f16 and f32, mma.sync m16n8k32 s8 and m16n8k16 f16, dp4a)
// is implemented in emu.cpp from the PTX ISA manual's rounding rules and fragment tables, not
// from the kernels' own view of them.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define BEVRT_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct float3 {
    float x, y, z;
};

namespace bevrt_emu {
extern thread_local uint3 thread_idx;
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
void syncthreads();
void mma_s8_m16n8k32(int* c, const unsigned* a, const unsigned* b);
void mma_f16_m16n8k16(float* c, const unsigned* a, const unsigned* b);
unsigned short cvt_rn_f16_f32(float f);
float cvt_f32_f16(unsigned short h);
}  // namespace bevrt_emu

#define threadIdx (::bevrt_emu::thread_idx)
#define blockIdx (::bevrt_emu::block_idx)
#define blockDim (::bevrt_emu::block_dim)
#define gridDim (::bevrt_emu::grid_dim)

inline void __syncthreads() { ::bevrt_emu::syncthreads(); }

// cvt.f32.f16 and cvt.rn.f16.f32 (common.cuh's h2f / f2h on the device)
inline float h2f(unsigned short h) { return ::bevrt_emu::cvt_f32_f16(h); }
inline unsigned short f2h(float f) { return ::bevrt_emu::cvt_rn_f16_f32(f); }

inline void mma_s8_m16n8k32(int (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ::bevrt_emu::mma_s8_m16n8k32(c, a, b);
}
inline void mma_f16_m16n8k16(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ::bevrt_emu::mma_f16_m16n8k16(c, a, b);
}

// dp4a.s32.s32: four signed byte products summed into c (32-bit wrap-around).
inline int __dp4a(int a, int b, int c) {
    unsigned acc = (unsigned)c;
    for (int i = 0; i < 4; ++i) {
        int x = (signed char)(((unsigned)a >> (8 * i)) & 0xff);
        int y = (signed char)(((unsigned)b >> (8 * i)) & 0xff);
        acc += (unsigned)(x * y);
    }
    return (int)acc;
}

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
// Device rsqrtf is an approximation (within 2 ulp); the emulation uses the exact value, so a
// comparison against the CPU twin must allow what the hardware is allowed.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
