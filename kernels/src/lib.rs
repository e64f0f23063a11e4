//! bevrt-kernels
