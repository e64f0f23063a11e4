#![no_main]
//! Fuzz target `calib_yaml`: see `bevrt_tests::fuzz_targets::calib_yaml`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::calib_yaml(data);
});
