//! Detection + calibration over a set of images (used by `bevrt-tool calibrate` and
//! `calib-bench`): detects boards (optionally on several threads), rejects views with a
//! reason, calibrates, and times both stages.

use std::time::Instant;

use serde::Serialize;

use crate::calibrate::{CalibOptions, CalibResult, View, board_points, calibrate};
use crate::chessboard::{DetectOptions, find_chessboard_with};
use crate::error::CalibError;
use crate::imgproc::GrayImage;

/// A view that was not used, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct PipelineResult {
    pub calib: CalibResult,
    /// Names of the views used, in the order of `calib.per_view_rms`.
    pub used: Vec<String>,
    pub rejected: Vec<Rejected>,
    pub detect_s: f64,
    pub solve_s: f64,
}

/// Board corners of every image; `threads` = 1 runs sequentially.
pub fn detect_all(
    images: &[(String, GrayImage)],
    cols: usize,
    rows: usize,
    detect: &DetectOptions,
    threads: usize,
) -> Vec<Result<Vec<nalgebra::Point2<f64>>, String>> {
    let threads = threads.clamp(1, images.len().max(1));
    if threads == 1 {
        return images
            .iter()
            .map(|(_, im)| find_chessboard_with(im, cols, rows, detect).map_err(|e| e.to_string()))
            .collect();
    }
    let mut out: Vec<Option<Result<Vec<nalgebra::Point2<f64>>, String>>> = vec![None; images.len()];
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut local = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= images.len() {
                            break;
                        }
                        local.push((
                            i,
                            find_chessboard_with(&images[i].1, cols, rows, detect)
                                .map_err(|e| e.to_string()),
                        ));
                    }
                    local
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                for (i, r) in v {
                    out[i] = Some(r);
                }
            }
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("detection thread failed".into())))
        .collect()
}

/// Detects and calibrates. Images whose size differs from the first image are rejected.
pub fn calibrate_images(
    images: &[(String, GrayImage)],
    cols: usize,
    rows: usize,
    square: f64,
    opt: &CalibOptions,
    detect: &DetectOptions,
    threads: usize,
) -> Result<PipelineResult, CalibError> {
    let Some((_, first)) = images.first() else {
        return Err(CalibError::Calibration("no images".into()));
    };
    let (w, h) = (first.width, first.height);
    let t0 = Instant::now();
    let det = detect_all(images, cols, rows, detect, threads);
    let detect_s = t0.elapsed().as_secs_f64();
    let obj = board_points(cols, rows, square);
    let mut views = Vec::new();
    let mut used = Vec::new();
    let mut rejected = Vec::new();
    for ((name, img), d) in images.iter().zip(det) {
        if (img.width, img.height) != (w, h) {
            rejected.push(Rejected {
                file: name.clone(),
                reason: format!(
                    "image size {}x{} differs from {}x{}",
                    img.width, img.height, w, h
                ),
            });
            continue;
        }
        match d {
            Ok(c) => {
                views.push(View {
                    name: name.clone(),
                    object: obj.clone(),
                    image: c,
                });
                used.push(name.clone());
            }
            Err(reason) => rejected.push(Rejected {
                file: name.clone(),
                reason,
            }),
        }
    }
    let t1 = Instant::now();
    let calib = calibrate(&views, w as u32, h as u32, opt)?;
    let solve_s = t1.elapsed().as_secs_f64();
    Ok(PipelineResult {
        calib,
        used,
        rejected,
        detect_s,
        solve_s,
    })
}
