#![no_main]
//! Fuzz target `manifest`: see `bevrt_tests::fuzz_targets::manifest`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::manifest(data);
});
