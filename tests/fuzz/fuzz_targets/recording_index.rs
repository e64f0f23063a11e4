#![no_main]
//! Fuzz target `recording_index`: see `bevrt_tests::fuzz_targets::recording_index`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::recording_index(data);
});
