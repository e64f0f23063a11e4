#![no_main]
//! Fuzz target `npy`: see `bevrt_tests::fuzz_targets::npy`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::npy(data);
});
