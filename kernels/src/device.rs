//! Finding a CUDA device without panicking when there is none.
//!
//! cudarc is built with dynamic loading, so bevrt builds and runs on machines without CUDA;
//! `CudaContext::new` panics when libcuda is missing, so [`probe`] checks for the library
//! first.
//!
//! On Jetson / DRIVE (L4T, JetPack) the driver library lives outside the usual directories
//! (`/usr/lib/aarch64-linux-gnu/tegra`, or `.../nvidia` from JetPack 6), which JetPack puts
//! on the loader's path through `/etc/ld.so.conf.d`; a container or a trimmed image may not.
//! [`probe`] then loads it from those places by full path first (and CUDA's
//! forward-compatibility directory), so cudarc's later `dlopen("libcuda.so.1")` finds it
//! already loaded.

/// Where the driver library is when the loader's path does not name it.
pub const DRIVER_PLACES: [&str; 4] = [
    "/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1",
    "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1",
    "/usr/local/cuda/compat/libcuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
];

/// Load the driver library from [`DRIVER_PLACES`] when the loader cannot find it by name;
/// returns the path it came from (`None`: found by name, or nowhere).
pub fn preload_driver() -> Option<&'static str> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading the CUDA driver library runs its initialisers, as cudarc's own load does.
    unsafe {
        if Library::open(Some("libcuda.so.1"), RTLD_NOW | RTLD_GLOBAL).is_ok() {
            return None;
        }
        for place in DRIVER_PLACES {
            if let Ok(lib) = Library::open(Some(place), RTLD_NOW | RTLD_GLOBAL) {
                // Kept loaded for the process's life: cudarc resolves its symbols from it.
                std::mem::forget(lib);
                log::info!("CUDA driver loaded from {place} (not on the loader's path)");
                return Some(place);
            }
        }
    }
    None
}

/// What the driver reports about device 0.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability (major, minor): (8, 7) for Orin, (9, 0) for H100.
    pub sm: (i32, i32),
    pub memory_bytes: usize,
    /// CUDA driver API version, e.g. 12060.
    pub driver_version: i32,
}

#[derive(Debug, thiserror::Error)]
#[error("CUDA driver: {0}")]
pub struct DeviceError(pub String);

/// `Ok(None)` when no CUDA driver library is installed, `Ok(Some)` for device 0, `Err` when a
/// driver exists but fails (no device, wrong version, permissions).
pub fn probe() -> Result<Option<DeviceInfo>, DeviceError> {
    preload_driver();
    // SAFETY: only tries to dlopen libcuda; no driver call is made through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Ok(None);
    }
    // A broken libcuda can still panic inside cudarc; keep that from taking the process down.
    let r = std::panic::catch_unwind(|| -> Result<DeviceInfo, DeviceError> {
        use cudarc::driver::result;
        use cudarc::driver::sys::CUdevice_attribute as A;
        let e = |e: result::DriverError| DeviceError(format!("{e:?}"));
        result::init().map_err(e)?;
        let dev = result::device::get(0).map_err(e)?;
        let name = result::device::get_name(dev).map_err(e)?;
        let major = unsafe {
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        }
        .map_err(e)?;
        let minor = unsafe {
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        }
        .map_err(e)?;
        let memory_bytes = unsafe { result::device::total_mem(dev) }.map_err(e)?;
        let mut driver_version = 0i32;
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        Ok(DeviceInfo {
            name,
            sm: (major, minor),
            memory_bytes,
            driver_version,
        })
    });
    match r {
        Ok(r) => r.map(Some),
        Err(_) => Err(DeviceError(
            "the CUDA driver library panicked while probing".into(),
        )),
    }
}
