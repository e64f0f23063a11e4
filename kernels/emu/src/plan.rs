//! A whole kernel plan on the emulated kernels: host arenas laid out as the GPU's, and the
//! launches `bevrt_kernels::exec::resolve_launches` resolves for [`PlanRunner`] (same kernel
//! names, configurations and argument lists), so the plan runner's launch code is what runs.
//!
//! [`PlanRunner`]: bevrt_kernels::exec::PlanRunner

use crate::run::{EmuError, EmuOptions, launch};
use bevrt_kernels::exec::{Arg, Int8Gemm, ResolvedLaunch, pack_consts, resolve_launches};
use bevrt_kernels::plan::{ALIGN, KernelPlan};
use std::ffi::c_void;

/// A zeroed host buffer aligned like device memory (cudaMalloc gives 256 bytes).
pub struct DeviceLike {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl DeviceLike {
    pub fn zeroed(bytes: usize) -> DeviceLike {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), ALIGN).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for {bytes} bytes");
        DeviceLike { ptr, layout }
    }
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: allocated with this size, initialised (zeroed), owned.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for DeviceLike {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A plan loaded onto the emulated device.
pub struct EmuPlan {
    pub plan: KernelPlan,
    arena: DeviceLike,
    _consts: DeviceLike,
    launches: Vec<ResolvedLaunch>,
}

impl EmuPlan {
    /// Pack the constants, allocate the arena and resolve every launch, as
    /// [`bevrt_kernels::exec::PlanRunner::load`] does on the GPU.
    pub fn load(plan: KernelPlan, int8: Int8Gemm) -> Result<EmuPlan, EmuError> {
        let (bytes, offsets) = pack_consts(&plan);
        let mut consts = DeviceLike::zeroed(bytes.len());
        consts.bytes_mut()[..bytes.len()].copy_from_slice(&bytes);
        let arena = DeviceLike::zeroed(plan.arena_bytes.max(ALIGN));
        let launches = resolve_launches(&plan, arena.addr(), consts.addr(), &offsets, int8)
            .map_err(EmuError)?;
        Ok(EmuPlan {
            plan,
            arena,
            _consts: consts,
            launches,
        })
    }

    /// The arena (all activations), as the device check downloads it.
    pub fn arena(&self) -> &[u8] {
        &self.arena.bytes()[..self.plan.arena_bytes]
    }

    pub fn arena_mut(&mut self) -> &mut [u8] {
        let n = self.plan.arena_bytes;
        &mut self.arena.bytes_mut()[..n]
    }

    pub fn launches(&self) -> &[ResolvedLaunch] {
        &self.launches
    }

    /// Write input `k` from f32 values (converted to its storage).
    pub fn set_input(&mut self, k: usize, x: &[f32]) {
        let t = self.plan.inputs[k];
        let plan = &self.plan;
        let arena = &mut self.arena.bytes_mut()[..plan.arena_bytes];
        bevrt_kernels::reference::write_float(plan, arena, t, x);
    }

    /// Run step `i` on the emulated kernels.
    pub fn launch_step(&mut self, i: usize, opts: EmuOptions) -> Result<(), EmuError> {
        let l = &self.launches[i];
        let mut values = l.args.clone();
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|a| match a {
                Arg::Ptr(v) => v as *mut u64 as *mut c_void,
                Arg::I32(v) => v as *mut i32 as *mut c_void,
                Arg::F32(v) => v as *mut f32 as *mut c_void,
                Arg::Conv(v) => v as *mut _ as *mut c_void,
                Arg::Binary(v) => v as *mut _ as *mut c_void,
                Arg::Pool(v) => v as *mut _ as *mut c_void,
                Arg::Resize(v) => v as *mut _ as *mut c_void,
                Arg::Transpose(v) => v as *mut _ as *mut c_void,
            })
            .collect();
        // SAFETY: `resolve_launches` built the list in the kernel's signature order, with
        // addresses inside this plan's arena and constants.
        unsafe { launch(l.kernel, &l.cfg, &mut ptrs, opts) }
            .map_err(|e| EmuError(format!("step {i} ({}): {}", self.plan.steps[i].name, e.0)))
    }

    /// Run every step.
    pub fn run(&mut self, opts: EmuOptions) -> Result<(), EmuError> {
        for i in 0..self.launches.len() {
            self.launch_step(i, opts)?;
        }
        Ok(())
    }

    /// Output `k` as f32 (int8 dequantized, class maps as indices).
    pub fn output(&self, k: usize) -> Vec<f32> {
        bevrt_kernels::reference::output_f32(&self.plan, self.arena(), self.plan.outputs[k])
    }
}
