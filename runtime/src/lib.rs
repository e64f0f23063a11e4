//! bevrt-runtime
