//! bevrt-models
