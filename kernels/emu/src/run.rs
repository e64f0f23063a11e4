//! Running one emulated kernel: the C++ side's entry points, [`launch`] by name with a
//! [`LaunchConfig`] and cuLaunchKernel-style parameters, and [`Args`] to build those.

use cudarc::driver::LaunchConfig;
use std::ffi::{CStr, CString, c_char, c_void};

#[cfg(not(bevrt_emu_missing))]
unsafe extern "C" {
    fn bevrt_emu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        params: *mut *mut c_void,
        flags: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn bevrt_emu_entry_count() -> usize;
    fn bevrt_emu_entry_name(i: usize, cooperative: *mut i32) -> *const c_char;
    fn bevrt_emu_cvt_rn_f16_f32(f: f32) -> u16;
    fn bevrt_emu_cvt_f32_f16(h: u16) -> f32;
}

/// Stand-ins when the build found no C++ compiler: nothing runs, [`available`] says so.
#[cfg(bevrt_emu_missing)]
mod missing {
    use std::ffi::{c_char, c_void};
    pub unsafe fn bevrt_emu_launch(
        _: *const c_char,
        _: *const u32,
        _: *const u32,
        _: u32,
        _: *mut *mut c_void,
        _: u32,
        err: *mut c_char,
        len: usize,
    ) -> i32 {
        let msg = b"the CUDA emulation was built without a C++ compiler\0";
        let n = msg.len().min(len);
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, err, n) };
        1
    }
    pub unsafe fn bevrt_emu_entry_count() -> usize {
        0
    }
    pub unsafe fn bevrt_emu_entry_name(_: usize, _: *mut i32) -> *const c_char {
        std::ptr::null()
    }
    pub unsafe fn bevrt_emu_cvt_rn_f16_f32(_: f32) -> u16 {
        0
    }
    pub unsafe fn bevrt_emu_cvt_f32_f16(_: u16) -> f32 {
        0.0
    }
}
#[cfg(bevrt_emu_missing)]
use missing::*;

/// Whether the emulation was built (a C++ compiler was found). Tests skip without it, unless
/// `BEVRT_REQUIRE_EMU` is set, where that is a failure.
pub fn available() -> bool {
    let built = !cfg!(bevrt_emu_missing);
    if !built {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_EMU").is_none(),
            "BEVRT_REQUIRE_EMU is set but the emulation was built without a C++ compiler"
        );
        eprintln!("SKIP: the CUDA kernel emulation was built without a C++ compiler (install g++)");
    }
    built
}

#[derive(Debug, thiserror::Error)]
#[error("emulated launch: {0}")]
pub struct EmuError(pub String);

/// Launch options beyond the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmuOptions {
    /// Mutation test: every lane swaps its A fragment registers 0 and 1 before each
    /// `mma.sync`, which must break any tensor-core kernel's agreement with its twin.
    pub swap_mma_a_registers: bool,
}

/// Every registered entry point and whether it runs with OS threads (it synchronises).
pub fn entries() -> Vec<(String, bool)> {
    // SAFETY: indices below the count; names are static C strings.
    unsafe {
        (0..bevrt_emu_entry_count())
            .map(|i| {
                let mut coop = 0;
                let p = bevrt_emu_entry_name(i, &mut coop);
                (CStr::from_ptr(p).to_string_lossy().into_owned(), coop != 0)
            })
            .collect()
    }
}

/// The emulation's `cvt.rn.f16.f32` (for checking it against the PTX rules directly).
pub fn cvt_rn_f16_f32(f: f32) -> u16 {
    // SAFETY: pure function.
    unsafe { bevrt_emu_cvt_rn_f16_f32(f) }
}

/// The emulation's `cvt.f32.f16`.
pub fn cvt_f32_f16(h: u16) -> f32 {
    // SAFETY: pure function.
    unsafe { bevrt_emu_cvt_f32_f16(h) }
}

/// Run `kernel` on the CPU.
///
/// # Safety
/// `params` must point to one value per kernel parameter, each of the parameter's C type
/// (pointers as 8-byte addresses of host memory large enough for what the kernel touches).
pub unsafe fn launch(
    kernel: &str,
    cfg: &LaunchConfig,
    params: &mut [*mut c_void],
    opts: EmuOptions,
) -> Result<(), EmuError> {
    let name = CString::new(kernel).map_err(|e| EmuError(e.to_string()))?;
    let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
    let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
    let mut err = vec![0 as c_char; 512];
    let flags = opts.swap_mma_a_registers as u32;
    // SAFETY: the caller vouches for the parameters; the rest are local buffers.
    let rc = unsafe {
        bevrt_emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            cfg.shared_mem_bytes,
            params.as_mut_ptr(),
            flags,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: the C side wrote a NUL-terminated message into `err`.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
        Err(EmuError(msg.to_string_lossy().into_owned()))
    }
}

/// Kernel arguments by value, each kept 8-byte aligned, as the parameter array a launch
/// takes.
#[derive(Default)]
pub struct Args {
    values: Vec<Box<[u64]>>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// Append one argument (a parameter block, an int, a float or a device address as u64).
    pub fn arg<T: Copy>(&mut self, v: T) -> &mut Args {
        let n = size_of::<T>().div_ceil(8).max(1);
        let mut b = vec![0u64; n].into_boxed_slice();
        // SAFETY: `b` holds at least size_of::<T>() bytes and is 8-byte aligned.
        unsafe { std::ptr::write(b.as_mut_ptr() as *mut T, v) };
        self.values.push(b);
        self
    }

    /// Host address of a buffer, as a kernel's pointer argument.
    pub fn ptr<T>(&mut self, p: *const T) -> &mut Args {
        self.arg(p as u64)
    }

    /// Launch `kernel` with these arguments.
    ///
    /// # Safety
    /// As [`launch`]: the arguments must match the kernel's parameters and every pointer
    /// must cover what the kernel reads and writes.
    pub unsafe fn launch(
        &mut self,
        kernel: &str,
        cfg: &LaunchConfig,
        opts: EmuOptions,
    ) -> Result<(), EmuError> {
        let mut ptrs: Vec<*mut c_void> = self
            .values
            .iter_mut()
            .map(|b| b.as_mut_ptr() as *mut c_void)
            .collect();
        // SAFETY: forwarded to the caller.
        unsafe { launch(kernel, cfg, &mut ptrs, opts) }
    }
}
