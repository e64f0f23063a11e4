#![no_main]
//! Fuzz target `onnx`: see `bevrt_tests::fuzz_targets::onnx`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // bevrt catches a panic inside the ONNX engine and reports it as an error naming the
        // file (`bevrt_models::onnx::model_from_proto`); libFuzzer's hook would abort on the
        // caught panic too. A panic nothing catches still aborts (libfuzzer-sys checks).
        // BEVRT_FUZZ_VERBOSE=1 prints each caught panic (to see what the engine refused).
        let verbose = std::env::var_os("BEVRT_FUZZ_VERBOSE").is_some();
        std::panic::set_hook(Box::new(move |info| {
            if verbose {
                eprintln!("panic: {info}");
            }
        }));
    },
    |data: &[u8]| {
        bevrt_tests::fuzz_targets::onnx(data);
    }
);
