#![no_main]
//! Fuzz target `image_decode`: see `bevrt_tests::fuzz_targets::image_decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::image_decode(data);
});
