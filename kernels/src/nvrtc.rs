//! Compiling bevrt's CUDA C kernels with NVRTC: the sources, the options and the target SMs in
//! one place.
//!
//! NVRTC is loaded dynamically (cudarc `dynamic-loading`): no CUDA toolkit is needed to build
//! bevrt, and the library can come from the PyPI wheel `nvidia-cuda-nvrtc-cu12` (put its `lib`
//! folder on `LD_LIBRARY_PATH`). Kernels are compiled to a CUBIN for a concrete SM (`sm_87`
//! Orin, `sm_90` H100) with ptxas's resource report parsed into registers and spills per kernel.

use std::ffi::CString;

/// One `.cu` file: its name, source (embedded, so a deployed binary needs no files) and the
/// `extern "C"` entry points it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub file: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
}

const COMMON: &str = include_str!("../cuda/common.cuh");

/// Every kernel file of bevrt.
pub const KERNELS: &[KernelSource] = &[
    KernelSource {
        file: "preprocess.cu",
        source: include_str!("../cuda/preprocess.cu"),
        entries: &["preprocess_f32", "preprocess_f16", "preprocess_i8"],
    },
    KernelSource {
        file: "bev_pool.cu",
        source: include_str!("../cuda/bev_pool.cu"),
        entries: &[
            "bev_pool_f32",
            "bev_pool_f16",
            "depth_softmax_f32",
            "bev_lift_f32",
        ],
    },
    KernelSource {
        file: "postprocess.cu",
        source: include_str!("../cuda/postprocess.cu"),
        entries: &["bev_argmax", "colourise"],
    },
    KernelSource {
        file: "fisher.cu",
        source: include_str!("../cuda/fisher.cu"),
        entries: &["afv_delta", "afv_conv_grad", "fisher_normalise"],
    },
    KernelSource {
        file: "conv.cu",
        source: include_str!("../cuda/conv.cu"),
        entries: &[
            "conv_i8_imma",
            "conv_i8_dp4a",
            "conv_f16_mma",
            "conv_direct_i8",
            "conv_direct_f16",
            "conv_direct_f32",
        ],
    },
    KernelSource {
        file: "ops.cu",
        source: include_str!("../cuda/ops.cu"),
        entries: &[
            "unary_f16",
            "unary_f32",
            "binary_f16",
            "binary_f32",
            "pool_f16",
            "pool_max_i8",
            "binary_i8",
            "scale_shift_i8",
            "resize_f16",
            "softmax_f16",
            "argmax_f16",
            "quantize_f16",
            "quantize_f32",
            "dequantize_f16",
            "cast_f32_f16",
            "cast_f16_f32",
            "copy_slice_f16",
            "transpose_b32",
            "transpose_b16",
            "transpose_b8",
        ],
    },
];

/// The SMs bevrt ships for: Orin (sm_87) and Hopper (sm_90). No Hopper-only instructions are
/// used, so sm_87 code is the portability floor.
pub const TARGET_SMS: &[u32] = &[87, 90];

/// The portable fallback: PTX for `compute_80`, which the driver JIT-compiles for any SM from
/// 8.0 on (A100, A10, L4, L40, and parts newer than bevrt's tested targets). The kernels need
/// sm_80 (`mma.sync` m16n8k32 with s8, `cvt.rn.f16.f32`).
pub const PTX_FALLBACK_ARCH: u32 = 80;

/// How a device of SM `sm` gets its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// A CUBIN for exactly this SM (a tested target).
    Cubin(u32),
    /// PTX for `compute_XX`, JIT-compiled by the driver at load.
    Ptx(u32),
}

/// The image to load on an SM: its own CUBIN for a tested target, else the `compute_80` PTX
/// from sm_80 on; `None` below sm_80 (the tensor-core kernels cannot run there).
pub fn image_for(sm: u32) -> Option<KernelImage> {
    if TARGET_SMS.contains(&sm) {
        Some(KernelImage::Cubin(sm))
    } else if sm >= PTX_FALLBACK_ARCH {
        Some(KernelImage::Ptx(PTX_FALLBACK_ARCH))
    } else {
        None
    }
}

/// The file name of a kernel file's image in a `compile-kernels` directory.
pub fn image_file(k: &KernelSource, image: KernelImage) -> String {
    let stem = k.file.trim_end_matches(".cu");
    match image {
        KernelImage::Cubin(sm) => format!("{stem}.sm_{sm}.cubin"),
        KernelImage::Ptx(arch) => format!("{stem}.compute_{arch}.ptx"),
    }
}

/// NVRTC options for every kernel (plus `--gpu-architecture=sm_XX`). IEEE division and square
/// root, and no contraction of multiply-add into FMA: the bevrt-op kernels then compute exactly
/// what their CPU references compute, bit for bit (these kernels are memory-bound; the
/// convolution kernels will opt into FMA where they need it).
pub const NVRTC_OPTIONS: &[&str] = &[
    "--std=c++17",
    "--fmad=false",
    "--ptxas-options=-v",
    "-lineinfo",
];

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error(
        "NVRTC library not found (libnvrtc.so): install the wheel nvidia-cuda-nvrtc-cu12 and put \
         its nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH"
    )]
    NotFound,
    #[error("{file} for sm_{sm}: {message}")]
    Compile {
        file: String,
        sm: u32,
        message: String,
    },
}

/// ptxas's resource use for one kernel.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelResources {
    pub kernel: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub shared_bytes: u32,
}

/// A compiled file for one SM.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub file: &'static str,
    pub sm: u32,
    pub cubin: Vec<u8>,
    pub resources: Vec<KernelResources>,
    pub log: String,
}

/// Whether libnvrtc can be loaded.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    if !available() {
        return Err(NvrtcError::NotFound);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    Ok((major, minor))
}

/// The full source NVRTC sees: shared helpers inlined (no include path at run time).
pub fn full_source(k: &KernelSource) -> String {
    let body: String = k
        .source
        .lines()
        .filter(|l| !l.trim_start().starts_with("#include \"common.cuh\""))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{COMMON}\n{body}")
}

/// Compile one kernel file to a CUBIN for `sm`.
pub fn compile(k: &KernelSource, sm: u32) -> Result<Compiled, NvrtcError> {
    let (cubin, log) = compile_with(k, &format!("sm_{sm}"), sm, Output::Cubin)?;
    Ok(Compiled {
        file: k.file,
        sm,
        cubin,
        resources: parse_ptxas(&log),
        log,
    })
}

/// Compile one kernel file to PTX for the virtual architecture `compute_{arch}`.
pub fn compile_ptx(k: &KernelSource, arch: u32) -> Result<String, NvrtcError> {
    let (ptx, _) = compile_with(k, &format!("compute_{arch}"), arch, Output::Ptx)?;
    let text: Vec<u8> = ptx.into_iter().take_while(|b| *b != 0).collect();
    String::from_utf8(text).map_err(|e| NvrtcError::Compile {
        file: k.file.to_string(),
        sm: arch,
        message: format!("PTX is not text: {e}"),
    })
}

enum Output {
    Cubin,
    Ptx,
}

fn compile_with(
    k: &KernelSource,
    gpu_arch: &str,
    sm: u32,
    output: Output,
) -> Result<(Vec<u8>, String), NvrtcError> {
    use cudarc::nvrtc::{result, sys};
    if !available() {
        return Err(NvrtcError::NotFound);
    }
    let err = |message: String| NvrtcError::Compile {
        file: k.file.to_string(),
        sm,
        message,
    };
    let src = CString::new(full_source(k)).map_err(|e| err(e.to_string()))?;
    let name = CString::new(k.file).map_err(|e| err(e.to_string()))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| err(format!("{e:?}")))?;
    let mut opts: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={gpu_arch}"));
    // SAFETY: `prog` was created above and is destroyed once below.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| {
            // c_char is i8 on x86-64 and u8 on aarch64: the cast is needed on one of them.
            #[allow(clippy::unnecessary_cast)]
            let bytes: Vec<u8> = l
                .iter()
                .take_while(|c| **c != 0)
                .map(|c| *c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let out = compiled
        .map_err(|e| err(format!("{e:?}\n{log}")))
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: size query, then a buffer of that size.
            let size_rc = match output {
                Output::Cubin => unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) },
                Output::Ptx => unsafe { sys::nvrtcGetPTXSize(prog, &mut size) },
            };
            size_rc
                .result()
                .map_err(|e| err(format!("image size: {e:?}")))?;
            let mut image = vec![0u8; size];
            let rc = match output {
                Output::Cubin => unsafe { sys::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut _) },
                Output::Ptx => unsafe { sys::nvrtcGetPTX(prog, image.as_mut_ptr() as *mut _) },
            };
            rc.result().map_err(|e| err(format!("image: {e:?}")))?;
            Ok(image)
        });
    // SAFETY: created above, not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    Ok((out?, log))
}

/// The on-disk cache key of a kernel file's CUBIN: source (with the shared header), options,
/// SM and NVRTC version, hashed. Any change to one of them compiles anew.
pub fn cache_key(k: &KernelSource, sm: u32, nvrtc: (i32, i32)) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(full_source(k).as_bytes());
    for o in NVRTC_OPTIONS {
        h.update(o.as_bytes());
    }
    h.update(format!("sm_{sm} nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{}.sm_{sm}.{hex}.cubin", k.file.trim_end_matches(".cu"))
}

/// Where compiled CUBINs are cached: `$BEVRT_KERNEL_CACHE`, else `$XDG_CACHE_HOME/bevrt/kernels`,
/// else `~/.cache/bevrt/kernels`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("BEVRT_KERNEL_CACHE") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("bevrt/kernels"))
}

/// A kernel file's CUBIN for `sm`: from the disk cache, else compiled now and cached (a cache
/// that cannot be written only costs the compile next time).
pub fn cubin_cached(k: &KernelSource, sm: u32) -> Result<Vec<u8>, NvrtcError> {
    cubin_cached_in(cache_dir(), k, sm)
}

/// [`cubin_cached`] with the cache in `dir`.
pub fn cubin_cached_in(
    dir: Option<std::path::PathBuf>,
    k: &KernelSource,
    sm: u32,
) -> Result<Vec<u8>, NvrtcError> {
    let key = cache_key(k, sm, version()?);
    if let Some(d) = &dir
        && let Ok(b) = std::fs::read(d.join(&key))
        && b.starts_with(b"\x7fELF")
    {
        return Ok(b);
    }
    let c = compile(k, sm)?;
    if let Some(d) = &dir {
        let tmp = d.join(format!("{key}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(d)
            .and_then(|_| std::fs::write(&tmp, &c.cubin))
            .and_then(|_| std::fs::rename(&tmp, d.join(&key)));
        if let Err(e) = written {
            log::warn!("kernel cache {}: {e}", d.display());
        }
    }
    Ok(c.cubin)
}

/// Parse ptxas `-v` output: "Compiling entry function 'X' for 'sm_87'", then
/// "N bytes stack frame, S bytes spill stores, L bytes spill loads" and
/// "Used R registers, ... M bytes smem".
pub fn parse_ptxas(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = vec![];
    let num_before = |line: &str, word: &str| -> Option<u32> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources {
                kernel: name,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 0,
            });
        } else if let Some(k) = out.last_mut() {
            if let Some(v) = num_before(line, "bytes spill stores") {
                k.spill_stores = v;
            }
            if let Some(v) = num_before(line, "bytes spill loads") {
                k.spill_loads = v;
            }
            if let Some(v) = num_before(line, "registers") {
                k.registers = v;
            }
            if let Some(v) = num_before(line, "bytes smem") {
                k.shared_bytes = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'bev_argmax' for 'sm_87'\n\
ptxas info    : Function properties for bev_argmax\n\
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 10 registers, 380 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'colourise' for 'sm_87'\n\
ptxas info    : Used 12 registers, 1024 bytes smem, 384 bytes cmem[0]\n";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].registers, r[0].spill_stores, r[0].spill_loads),
            (10, 4, 4)
        );
        assert_eq!((r[1].registers, r[1].shared_bytes), (12, 1024));
    }

    #[test]
    fn cache_key_changes_with_sm_and_nvrtc_version() {
        let k = &KERNELS[0];
        let a = cache_key(k, 87, (12, 6));
        assert_ne!(a, cache_key(k, 90, (12, 6)));
        assert_ne!(a, cache_key(k, 87, (12, 8)));
        assert_eq!(a, cache_key(k, 87, (12, 6)));
        assert!(a.starts_with("preprocess.sm_87."), "{a}");
    }

    #[test]
    fn every_source_names_its_entries() {
        for k in KERNELS {
            for e in k.entries {
                // `void name(` or, with launch bounds, `void __launch_bounds__(N)\n    name(`
                let defined = k.source.contains(&format!("void {e}("))
                    || k.source.contains(&format!("\n    {e}("));
                assert!(defined, "{}: {e}", k.file);
            }
        }
    }
}
