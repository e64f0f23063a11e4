#![no_main]
//! Fuzz target `calib_toml`: see `bevrt_tests::fuzz_targets::calib_toml`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::calib_toml(data);
});
