//! Shared helpers for bevrt integration tests.
