//! Finding a CUDA device without panicking when there is none.
//!
//! cudarc is built with dynamic loading, so bevrt builds and runs on machines without CUDA;
//! `CudaContext::new` panics when libcuda is missing, so [`probe`] checks for the library
//! first.

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
