// The emulator's kernel registry: every `extern "C" __global__` entry point of kernels/cuda,
// with a trampoline that unpacks a cuLaunchKernel-style parameter array (one pointer per
// argument) into a call. build.rs generates one registry file per .cu file.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include "cuda_emu.h"

// Launch flag for the mutation test: every lane swaps its A fragment registers 0 and 1
// before an mma.sync, so a correct kernel must then disagree with its CPU twin.
#define BEVRT_EMU_SWAP_MMA_A_REGS 1u

namespace bevrt_emu {

struct Entry {
    const char* name;
    void (*call)(void** params);
    // Uses __syncthreads or mma.sync: its threads run as OS threads.
    bool cooperative;
};

template <typename F>
struct Trampoline;

template <typename... A>
struct Trampoline<void (*)(A...)> {
    template <void (*K)(A...), std::size_t... I>
    static void unpack(void** p, std::index_sequence<I...>) {
        K(*static_cast<std::remove_cv_t<A>*>(p[I])...);
    }
    template <void (*K)(A...)>
    static void call(void** p) {
        unpack<K>(p, std::index_sequence_for<A...>{});
    }
};

#define BEVRT_EMU_ENTRY(name, coop) \
    ::bevrt_emu::Entry { #name, &::bevrt_emu::Trampoline<decltype(&name)>::call<&name>, coop }

}  // namespace bevrt_emu

extern "C" const bevrt_emu::Entry* bevrt_emu_all_entries(std::size_t* n);
