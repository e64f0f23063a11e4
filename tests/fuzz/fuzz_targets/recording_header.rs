#![no_main]
//! Fuzz target `recording_header`: see `bevrt_tests::fuzz_targets::recording_header`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::recording_header(data);
});
