// The CPU side of the CUDA emulation: grid and block execution, barriers, and the PTX
// instructions the kernels use, written from the PTX ISA manual (see cuda_emu.h).
#include "emu.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bevrt_emu {

thread_local uint3 thread_idx;
uint3 block_idx;
dim3 block_dim, grid_dim;

namespace {

thread_local unsigned linear_tid;

// One warp's staging area for mma.sync: every lane deposits its fragment registers, the
// warp meets at a barrier, each lane computes its own accumulators from all lanes' fragments.
struct Warp {
    explicit Warp(unsigned n) : bar(n), size(n), live(n) {}
    std::barrier<> bar;
    unsigned size;
    std::atomic<unsigned> live;
    unsigned a[32][4];
    unsigned b[32][2];
};

struct Block {
    bool threaded = false;
    unsigned flags = 0;
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    std::mutex mu;
    std::string error;

    void fail(const std::string& e) {
        std::lock_guard<std::mutex> g(mu);
        if (error.empty()) error = e;
    }
};

Block* current = nullptr;

Warp& my_warp() { return *current->warps[linear_tid / 32]; }

uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Both halves of an mma.sync: the warp's fragments are complete after the first barrier, and
// no lane may overwrite them (its next mma) before every lane has read them.
template <typename Compute>
void warp_collective(const unsigned* a, const unsigned* b, Compute compute) {
    if (!current->threaded) {
        current->fail("mma.sync in a kernel run without threads");
        return;
    }
    Warp& w = my_warp();
    if (w.size != 32 || w.live.load() != 32) {
        current->fail("mma.sync with fewer than 32 live lanes in the warp (undefined in PTX)");
    }
    unsigned lane = linear_tid % 32;
    std::copy(a, a + 4, w.a[lane]);
    std::copy(b, b + 2, w.b[lane]);
    if (current->flags & BEVRT_EMU_SWAP_MMA_A_REGS) std::swap(w.a[lane][0], w.a[lane][1]);
    w.bar.arrive_and_wait();
    compute(w, lane);
    w.bar.arrive_and_wait();
}

}  // namespace

void syncthreads() {
    if (!current->threaded) {
        current->fail("__syncthreads in a kernel run without threads");
        return;
    }
    current->bar->arrive_and_wait();
}

// Fragment tables of the PTX ISA ("Matrix Fragments for mma.m16n8k32", integer types):
// groupID = lane >> 2, threadID_in_group = lane % 4. Element a_i (i = 0..15, four per 32-bit
// register, lowest byte first): row = groupID for i < 4 or 8 <= i < 12, else groupID + 8;
// col = threadID_in_group * 4 + (i & 3), + 16 for i >= 8. Element b_i (i = 0..7): row =
// threadID_in_group * 4 + (i & 3), + 16 for i >= 4; col = groupID. Accumulator c_i (i = 0..3):
// row = groupID, + 8 for i >= 2; col = threadID_in_group * 2 + (i & 1). Integer accumulation
// wraps (no .satfinite).
void mma_s8_m16n8k32(int* c, const unsigned* a, const unsigned* b) {
    warp_collective(a, b, [c](Warp& w, unsigned lane) {
        int A[16][32], B[32][8];
        for (unsigned l = 0; l < 32; ++l) {
            unsigned g = l >> 2, t = l & 3;
            for (int i = 0; i < 16; ++i) {
                int row = g + (((i >> 2) & 1) ? 8 : 0);
                int col = t * 4 + (i & 3) + (i >= 8 ? 16 : 0);
                A[row][col] = (signed char)((w.a[l][i / 4] >> (8 * (i % 4))) & 0xff);
            }
            for (int i = 0; i < 8; ++i) {
                int row = t * 4 + (i & 3) + (i >= 4 ? 16 : 0);
                B[row][g] = (signed char)((w.b[l][i / 4] >> (8 * (i % 4))) & 0xff);
            }
        }
        unsigned g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
            unsigned acc = (unsigned)c[i];
            for (int k = 0; k < 32; ++k) acc += (unsigned)(A[row][k] * B[k][col]);
            c[i] = (int)acc;
        }
    });
}

// "Matrix Fragments for mma.m16n8k16 with floating point type": a_i (i = 0..7, two f16 per
// register, low half first): row = groupID for i < 2 or 4 <= i < 6, else groupID + 8; col =
// threadID_in_group * 2 + (i & 1), + 8 for i >= 4. b_i (i = 0..3): row = threadID_in_group *
// 2 + (i & 1), + 8 for i >= 2; col = groupID. c_i as for m16n8k32. f16 products are exact in
// f32; the manual leaves the order of the additions open, so the sum is taken in double and
// rounded once (a twin comparison allows for the accumulation order).
void mma_f16_m16n8k16(float* c, const unsigned* a, const unsigned* b) {
    warp_collective(a, b, [c](Warp& w, unsigned lane) {
        float A[16][16], B[16][8];
        for (unsigned l = 0; l < 32; ++l) {
            unsigned g = l >> 2, t = l & 3;
            for (int i = 0; i < 8; ++i) {
                int row = g + (((i >> 1) & 1) ? 8 : 0);
                int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                A[row][col] = cvt_f32_f16((unsigned short)(w.a[l][i / 2] >> (16 * (i % 2))));
            }
            for (int i = 0; i < 4; ++i) {
                int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
                B[row][g] = cvt_f32_f16((unsigned short)(w.b[l][i / 2] >> (16 * (i % 2))));
            }
        }
        unsigned g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
            double acc = c[i];
            for (int k = 0; k < 16; ++k) acc += (double)A[row][k] * (double)B[k][col];
            c[i] = (float)acc;
        }
    });
}

// cvt.rn.f16.f32: round to nearest even; magnitudes from 65520 up become infinity; results
// below 2^-14 are subnormal (not flushed: no .ftz); NaN becomes the canonical NaN 0x7fff.
unsigned short cvt_rn_f16_f32(float f) {
    uint32_t x = f32_bits(f);
    unsigned short sign = (unsigned short)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fff;
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // 65520 = 65504 + half an ulp: ties go up (even)
    if (ax < 0x38800000u) {                        // below 2^-14
        double scaled = (double)bits_f32(ax) * 16777216.0;  // units of 2^-24, exact
        double r = std::nearbyint(scaled);                  // default rounding mode: even
        return sign | (unsigned short)r;
    }
    uint32_t exp = (ax >> 23) - 127 + 15;
    uint32_t mant = ax & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
    return sign | (unsigned short)h;
}

// cvt.f32.f16: exact; NaN becomes the canonical NaN 0x7fffffff.
float cvt_f32_f16(unsigned short h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(mant ? 0x7fffffffu : (sign | 0x7f800000u));
    if (exp == 0) {
        float v = (float)mant * (1.0f / 16777216.0f);  // mant * 2^-24, exact
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

namespace {

const Entry* find_entry(const char* name) {
    size_t n = 0;
    const Entry* all = bevrt_emu_all_entries(&n);
    for (size_t i = 0; i < n; ++i)
        if (std::strcmp(all[i].name, name) == 0) return &all[i];
    return nullptr;
}

void run_block_sequential(const Entry& e, void** params) {
    // Threads without a barrier between them may run in any order: last first here too.
    unsigned n = block_dim.x * block_dim.y * block_dim.z;
    for (unsigned t = n; t-- > 0;) {
        thread_idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y,
                           t / (block_dim.x * block_dim.y)};
        linear_tid = t;
        e.call(params);
    }
}

void run_block_threaded(const Entry& e, void** params, Block& b) {
    unsigned n = block_dim.x * block_dim.y * block_dim.z;
    b.bar = std::make_unique<std::barrier<>>(n);
    b.warps.clear();
    for (unsigned w = 0; w < (n + 31) / 32; ++w)
        b.warps.push_back(std::make_unique<Warp>(std::min(32u, n - w * 32)));
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (unsigned t = 0; t < n; ++t) {
        threads.emplace_back([&, t] {
            thread_idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y,
                               t / (block_dim.x * block_dim.y)};
            linear_tid = t;
            e.call(params);
            // An exited thread no longer holds back its block's or its warp's barriers.
            Warp& w = *b.warps[t / 32];
            w.live.fetch_sub(1);
            w.bar.arrive_and_drop();
            b.bar->arrive_and_drop();
        });
    }
    for (auto& t : threads) t.join();
}

std::string check_config(const unsigned* grid, const unsigned* block, unsigned shared) {
    char buf[160];
    // The limits cuLaunchKernel enforces on every SM bevrt targets.
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 2147483647u ||
        grid[1] > 65535 || grid[2] > 65535) {
        std::snprintf(buf, sizeof buf, "invalid grid (%u, %u, %u)", grid[0], grid[1], grid[2]);
        return buf;
    }
    unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (block[0] == 0 || block[1] == 0 || block[2] == 0 || block[0] > 1024 || block[1] > 1024 ||
        block[2] > 64 || threads > 1024) {
        std::snprintf(buf, sizeof buf, "invalid block (%u, %u, %u)", block[0], block[1],
                      block[2]);
        return buf;
    }
    if (shared > 48 * 1024) return "dynamic shared memory over 48 KiB without opt-in";
    return "";
}

std::mutex launch_mu;

}  // namespace
}  // namespace bevrt_emu

using namespace bevrt_emu;

extern "C" int bevrt_emu_launch(const char* kernel, const unsigned* grid, const unsigned* block,
                                unsigned shared_bytes, void** params, unsigned flags,
                                char* err, size_t err_len) {
    auto fail = [&](const std::string& m) {
        if (err_len) {
            std::snprintf(err, err_len, "%s", m.c_str());
        }
        return 1;
    };
    const Entry* e = find_entry(kernel);
    if (!e) return fail(std::string("no kernel named ") + kernel);
    std::string bad = check_config(grid, block, shared_bytes);
    if (!bad.empty()) return fail(std::string(kernel) + ": " + bad);
    // One launch at a time: the execution state (block index, shared memory) is global.
    std::lock_guard<std::mutex> guard(launch_mu);
    Block b;
    b.threaded = e->cooperative;
    b.flags = flags;
    current = &b;
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    // Last block first: CUDA promises no order between blocks, so a kernel that reads what
    // an earlier block wrote shows up here instead of passing by luck of the order.
    for (unsigned z = grid[2]; z-- > 0 && b.error.empty();)
        for (unsigned y = grid[1]; y-- > 0 && b.error.empty();)
            for (unsigned x = grid[0]; x-- > 0 && b.error.empty();) {
                block_idx = uint3{x, y, z};
                if (b.threaded)
                    run_block_threaded(*e, params, b);
                else
                    run_block_sequential(*e, params);
            }
    current = nullptr;
    if (!b.error.empty()) return fail(std::string(kernel) + ": " + b.error);
    return 0;
}

extern "C" size_t bevrt_emu_entry_count() {
    size_t n = 0;
    bevrt_emu_all_entries(&n);
    return n;
}

extern "C" const char* bevrt_emu_entry_name(size_t i, int* cooperative) {
    size_t n = 0;
    const Entry* all = bevrt_emu_all_entries(&n);
    if (i >= n) return nullptr;
    *cooperative = all[i].cooperative;
    return all[i].name;
}

extern "C" unsigned short bevrt_emu_cvt_rn_f16_f32(float f) { return cvt_rn_f16_f32(f); }
extern "C" float bevrt_emu_cvt_f32_f16(unsigned short h) { return cvt_f32_f16(h); }
