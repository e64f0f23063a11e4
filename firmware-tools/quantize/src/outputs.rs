//! The bundle's final output on probe inputs, to compare a quantized bundle with its original.

use anyhow::Result;
use bevrt_models::{Bundle, Task};
use bevrt_runtime::backend::cpu::CpuBackend;
use bevrt_runtime::{Backend, BackendOptions};
use std::path::Path;

pub(crate) fn open_backend(bundle: &Bundle, calibration: Option<&Path>) -> Result<CpuBackend> {
    let mut b = CpuBackend::load(bundle, &BackendOptions::default())?;
    if let Some(c) = calibration
        && bundle.manifest.task == Task::Bev
    {
        b.set_calibration(c)?;
    }
    Ok(b)
}

/// The bundle's final output on the probe inputs.
pub(crate) struct Outputs(Vec<Vec<f32>>);

impl Outputs {
    pub(crate) fn of(
        bundle: &Bundle,
        inputs: &[Vec<f32>],
        calibration: Option<&Path>,
    ) -> Result<Outputs> {
        let mut b = open_backend(bundle, calibration)?;
        let mut r = b.new_result();
        let mut out = vec![];
        for x in inputs {
            b.set_input(x)?;
            b.infer()?;
            b.postprocess(&mut r)?;
            out.push(r.outputs[0].data.clone());
        }
        Ok(Outputs(out))
    }

    /// Relative RMS error against `reference`, and (for vectors of a few classes) the share
    /// of inputs whose argmax agrees.
    pub(crate) fn compare(&self, reference: &Outputs) -> (f64, Option<f64>) {
        let (mut num, mut den) = (0f64, 0f64);
        let mut agree = 0usize;
        for (a, b) in self.0.iter().zip(&reference.0) {
            for (x, y) in a.iter().zip(b) {
                num += ((x - y) as f64).powi(2);
                den += (*y as f64).powi(2);
            }
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|p, q| p.1.total_cmp(q.1))
                    .map(|(i, _)| i)
            };
            agree += usize::from(am(a) == am(b));
        }
        let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        let small = reference.0.first().is_some_and(|v| v.len() <= 1000);
        (
            rel,
            small.then(|| agree as f64 / self.0.len().max(1) as f64),
        )
    }
}
