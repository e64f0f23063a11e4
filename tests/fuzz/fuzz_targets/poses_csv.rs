#![no_main]
//! Fuzz target `poses_csv`: see `bevrt_tests::fuzz_targets::poses_csv`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::poses_csv(data);
});
