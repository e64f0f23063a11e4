#![no_main]
//! Fuzz target `mcap_bag`: see `bevrt_tests::fuzz_targets::mcap_bag`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::mcap_bag(data);
});
