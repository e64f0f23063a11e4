//! bevrt-kernels: CUDA C sources, their cudarc launchers and a CPU reference of every kernel.
//!
//! - [`device`]: finding a CUDA driver and device without panicking when there is none.

pub mod device;
