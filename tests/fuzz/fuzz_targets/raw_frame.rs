#![no_main]
//! Fuzz target `raw_frame`: see `bevrt_tests::fuzz_targets::raw_frame`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::raw_frame(data);
});
