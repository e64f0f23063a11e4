//! Compiles every kernels/cuda/*.cu file as host C++ (g++ through `cc`) with the emulation
//! header force-included, and generates the registry of `extern "C" __global__` entry points.
//!
//! `BEVRT_EMU_SANITIZE=address` builds the kernels with AddressSanitizer (then run the tests
//! with libasan preloaded: `.ci/run` does).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// An entry point and whether its body synchronises (then its threads run as OS threads).
struct Entry {
    name: String,
    cooperative: bool,
}

fn entries(src: &str) -> Vec<Entry> {
    let mut out = vec![];
    let key = "extern \"C\" __global__ void";
    let mut rest = src;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let mut s = rest.trim_start();
        if let Some(t) = s.strip_prefix("__launch_bounds__") {
            let close = t.find(')').expect("__launch_bounds__(...)");
            s = t[close + 1..].trim_start();
        }
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // the body: from the first '{' after the name to its matching '}'
        let open = s.find('{').expect("kernel body");
        let mut depth = 0;
        let mut end = open;
        for (j, c) in s[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &s[open..=end];
        out.push(Entry {
            cooperative: body.contains("__syncthreads") || body.contains("mma_"),
            name,
        });
    }
    out
}

/// Whether the C++ compiler `cc` would use runs at all (a machine with Rust and only a C
/// toolchain has none): without one the crate builds without the emulation and its tests
/// skip, unless `BEVRT_REQUIRE_EMU` is set (as `.ci/run` does).
fn cxx_available() -> bool {
    let c = cc::Build::new().cpp(true).get_compiler();
    std::process::Command::new(c.path())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bevrt_emu_asan)");
    println!("cargo::rustc-check-cfg=cfg(bevrt_emu_missing)");
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-env-changed=BEVRT_REQUIRE_EMU");
    if !cxx_available() {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_EMU").is_none(),
            "BEVRT_REQUIRE_EMU is set but no C++ compiler runs (install g++)"
        );
        println!(
            "cargo:warning=no C++ compiler: the CUDA kernel emulation is not built and its tests skip (install g++)"
        );
        println!("cargo:rustc-cfg=bevrt_emu_missing");
        return;
    }
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let cuda = here.join("../cuda").canonicalize().expect("kernels/cuda");
    let cpp = here.join("cpp");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", cuda.display());
    println!("cargo:rerun-if-changed={}", cpp.display());
    println!("cargo:rerun-if-env-changed=BEVRT_EMU_SANITIZE");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&cuda)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(&cpp)
        .opt_level(2)
        // --fmad=false on the device: no contraction into FMA here either
        .flag("-ffp-contract=off")
        .flag("-fno-strict-aliasing")
        .flag("-pthread")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-sign-compare")
        .file(cpp.join("emu.cpp"));
    let mut registry = String::from("#include \"emu.h\"\n#include <vector>\n");
    let mut getters = vec![];
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let src = std::fs::read_to_string(f).unwrap();
        let es = entries(&src);
        let mut tu = format!("#include \"emu.h\"\n#include \"{}\"\n", f.display());
        tu += "static const bevrt_emu::Entry entries[] = {\n";
        for e in &es {
            writeln!(tu, "    BEVRT_EMU_ENTRY({}, {}),", e.name, e.cooperative).unwrap();
        }
        writeln!(
            tu,
            "}};\nextern \"C\" const bevrt_emu::Entry* bevrt_emu_entries_{stem}(std::size_t* n) \
             {{ *n = {}; return entries; }}",
            es.len()
        )
        .unwrap();
        let path = out.join(format!("emu_{stem}.cpp"));
        std::fs::write(&path, tu).unwrap();
        build.file(&path);
        writeln!(
            registry,
            "extern \"C\" const bevrt_emu::Entry* bevrt_emu_entries_{stem}(std::size_t*);"
        )
        .unwrap();
        getters.push(format!("bevrt_emu_entries_{stem}"));
    }
    registry += "extern \"C\" const bevrt_emu::Entry* bevrt_emu_all_entries(std::size_t* n) {\n\
                 \x20   static const std::vector<bevrt_emu::Entry> all = [] {\n\
                 \x20       std::vector<bevrt_emu::Entry> v;\n\
                 \x20       std::size_t k = 0;\n";
    for g in &getters {
        writeln!(
            registry,
            "        {{ const bevrt_emu::Entry* e = {g}(&k); v.insert(v.end(), e, e + k); }}"
        )
        .unwrap();
    }
    registry += "        return v;\n    }();\n    *n = all.size();\n    return all.data();\n}\n";
    let reg = out.join("emu_registry.cpp");
    std::fs::write(&reg, registry).unwrap();
    build.file(&reg);

    if std::env::var("BEVRT_EMU_SANITIZE").as_deref() == Ok("address") {
        build
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer")
            .debug(true);
        let lib = std::process::Command::new("gcc")
            .arg("-print-file-name=libasan.so")
            .output()
            .expect("gcc -print-file-name=libasan.so");
        let lib = PathBuf::from(String::from_utf8_lossy(&lib.stdout).trim().to_string());
        println!(
            "cargo:rustc-link-search=native={}",
            lib.parent().unwrap_or(Path::new("/")).display()
        );
        println!("cargo:rustc-link-lib=dylib=asan");
        println!("cargo:rustc-cfg=bevrt_emu_asan");
    }
    build.compile("bevrt_kernels_emu");
}
