//! Every kernel compiles with NVRTC to a CUBIN for every target SM, without register spills,
//! and the checked-in resource table (kernels/RESOURCES.md) matches what ptxas reports.
//!
//! Needs libnvrtc (CI installs the wheel nvidia-cuda-nvrtc-cu12==12.6.77). Without it the test
//! prints SKIP, unless BEVRT_REQUIRE_NVRTC=1 (set by .ci/run), where it fails.

use bevrt_kernels::nvrtc;

#[test]
fn all_kernels_compile_for_all_sms_without_spills() {
    if !nvrtc::available() {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_NVRTC").is_none(),
            "BEVRT_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("SKIP: libnvrtc not found; install nvidia-cuda-nvrtc-cu12 (see .ci/run)");
        return;
    }
    let (maj, min) = nvrtc::version().unwrap();
    let mut table = String::new();
    for &sm in nvrtc::TARGET_SMS {
        for k in nvrtc::KERNELS {
            let c = nvrtc::compile(k, sm).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.cubin.len() > 64, "{}: empty cubin", k.file);
            assert!(
                c.cubin.starts_with(b"\x7fELF"),
                "{}: cubin is not an ELF image",
                k.file
            );
            for e in k.entries {
                let r = c
                    .resources
                    .iter()
                    .find(|r| r.kernel.contains(e))
                    .unwrap_or_else(|| panic!("{}: no ptxas report for {e}:\n{}", k.file, c.log));
                assert_eq!(
                    (r.spill_stores, r.spill_loads),
                    (0, 0),
                    "{} {e} spills on sm_{sm}",
                    k.file
                );
                table.push_str(&format!(
                    "| {} | {e} | sm_{sm} | {} | {} | {} |\n",
                    k.file, r.registers, r.spill_stores, r.spill_loads
                ));
            }
        }
    }
    eprintln!("NVRTC {maj}.{min}\n{table}");
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RESOURCES.md"))
        .expect("kernels/RESOURCES.md");
    for line in table.lines() {
        assert!(
            checked_in.contains(line),
            "kernels/RESOURCES.md is out of date; ptxas now reports:\n{line}\n(full table above)"
        );
    }
}

#[test]
fn compiled_cubins_are_cached_on_disk_and_reused() {
    if !nvrtc::available() {
        eprintln!("SKIP: libnvrtc not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bevrt-kcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let k = &nvrtc::KERNELS[2];
    let first = nvrtc::cubin_cached_in(Some(dir.clone()), k, 87).unwrap();
    let key = nvrtc::cache_key(k, 87, nvrtc::version().unwrap());
    let stored = std::fs::read(dir.join(&key)).expect("cubin written to the cache");
    assert_eq!(stored, first);
    // a cached file is what comes back (replace it with a marked copy to tell)
    let mut marked = first.clone();
    marked.extend_from_slice(b"cached");
    std::fs::write(dir.join(&key), &marked).unwrap();
    assert_eq!(
        nvrtc::cubin_cached_in(Some(dir.clone()), k, 87).unwrap(),
        marked
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_kernel_compiles_to_compute_80_ptx_for_other_gpus() {
    if !nvrtc::available() {
        eprintln!("SKIP: libnvrtc not found");
        return;
    }
    for k in nvrtc::KERNELS {
        let ptx = nvrtc::compile_ptx(k, nvrtc::PTX_FALLBACK_ARCH).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ptx.contains(".target sm_80"),
            "{}: {}",
            k.file,
            &ptx[..ptx.len().min(400)]
        );
        for e in k.entries {
            assert!(
                ptx.contains(&format!(".entry {e}(")),
                "{}: no .entry {e}",
                k.file
            );
        }
    }
    use nvrtc::{KernelImage, image_for};
    assert_eq!(image_for(87), Some(KernelImage::Cubin(87)));
    assert_eq!(image_for(90), Some(KernelImage::Cubin(90)));
    for sm in [80, 86, 89, 100, 120] {
        assert_eq!(image_for(sm), Some(KernelImage::Ptx(80)), "sm_{sm}");
    }
    assert_eq!(image_for(75), None);
}
