//! bevrt-kernels-emu: the real CUDA kernel sources of `kernels/cuda/` compiled as host C++ and
//! run on the CPU, so CI checks what the `.cu` files themselves compute (fragment layouts of
//! `mma.sync`, tile edges, barriers, launch shapes) against the kernels' CPU twins, without a
//! GPU.
//!
//! - `cpp/cuda_emu.h`: the CUDA language as C++ (thread/block indices, shared memory,
//!   `__syncthreads`, intrinsics); force-included before each `.cu` file.
//! - `cpp/emu.cpp`: execution (blocks one after another; a block's threads as OS threads when
//!   the kernel synchronises), launch-configuration checks as `cuLaunchKernel` makes them, and
//!   the PTX instructions (`cvt` f16/f32, `mma.sync` m16n8k32 s8 and m16n8k16 f16, `dp4a`)
//!   from the PTX ISA manual.
//! - `build.rs`: compiles every `.cu` file and registers each `extern "C" __global__` entry
//!   point; `BEVRT_EMU_SANITIZE=address` adds AddressSanitizer.
//! - `run`: [`launch`] runs a kernel by name with a [`LaunchConfig`] and cuLaunchKernel-style
//!   parameters; [`Args`] builds those from values; [`EmuPlan`] runs a whole kernel plan
//!   through the launches `bevrt_kernels::exec` resolves for the GPU (`plan`).
//! - `tails`: the AFV tail's kernels ([`afv_score`], [`fisher_normalise`]) as the GPU
//!   launches them.
//!
//! Tests: `tests/kernels.rs` (every entry point against its twin, the mutation that swaps
//! fragment registers) and `tests/plans.rs` (whole lowered models).

mod plan;
mod run;
mod tails;

pub use cudarc::driver::LaunchConfig;
pub use plan::EmuPlan;
pub use run::{
    Args, EmuError, EmuOptions, available, cvt_f32_f16, cvt_rn_f16_f32, entries, launch,
};
pub use tails::{afv_score, fisher_normalise};
