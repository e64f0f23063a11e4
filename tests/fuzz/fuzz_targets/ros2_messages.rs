#![no_main]
//! Fuzz target `ros2_messages`: see `bevrt_tests::fuzz_targets::ros2_messages`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bevrt_tests::fuzz_targets::ros2_messages(data);
});
