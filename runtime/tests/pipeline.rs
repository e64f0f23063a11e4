//! Pipeline behaviour under load, with a stand-in backend: a live source that outpaces
//! inference loses its oldest frames (counted), a file source loses nothing, a slow sink loses
//! sink work but no frames, and a failing frame is counted while the stream goes on.

use bevrt_models::Task;
use bevrt_runtime::backend::Backend;
use bevrt_runtime::frame::{Frame, PixelFormat};
use bevrt_runtime::pipeline::{self, PipelineOptions};
use bevrt_runtime::postprocess::{FrameResult, OutputTensor};
use bevrt_runtime::sink::Sink;
use bevrt_runtime::source::{FrameSource, Pacer, SourceError, SourceStatus};
use std::sync::Arc;
use std::time::Duration;

/// Counts up frames of 8x8 gray, optionally paced (live).
struct Counter {
    n: u64,
    total: u64,
    pacer: Pacer,
    bad_every: Option<u64>,
}

impl FrameSource for Counter {
    fn describe(&self) -> String {
        "counter".into()
    }
    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if self.n >= self.total {
            return Ok(SourceStatus::End);
        }
        self.pacer.wait();
        let n = self.n;
        self.n += 1;
        if self.bad_every.is_some_and(|k| n % k == k - 1) {
            return Err(SourceError::BadFrame {
                path: "counter".into(),
                message: format!("frame {n} corrupt"),
            });
        }
        frame.reset(PixelFormat::Gray8, 8, 8);
        frame.data.fill(n as u8);
        frame.seq = n;
        frame.timestamp_ns = n * 1000;
        Ok(SourceStatus::Frame)
    }
    fn is_live(&self) -> bool {
        self.pacer.is_paced()
    }
}

/// Sleeps `delay` per inference; fails on frames whose first pixel is `fail_on`.
struct SlowBackend {
    delay: Duration,
    fail_on: Option<u8>,
    last: u8,
}

impl Backend for SlowBackend {
    fn describe(&self) -> String {
        "slow".into()
    }
    fn preprocess(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.last = frame.data[0];
        Ok(())
    }
    fn infer(&mut self) -> anyhow::Result<()> {
        std::thread::sleep(self.delay);
        if Some(self.last) == self.fail_on {
            anyhow::bail!("model failed on this frame");
        }
        Ok(())
    }
    fn postprocess(&mut self, out: &mut FrameResult) -> anyhow::Result<()> {
        out.outputs[0].data[0] = self.last as f32;
        Ok(())
    }
    fn new_result(&self) -> FrameResult {
        FrameResult::new(
            Task::Features,
            vec![OutputTensor {
                name: "x".into(),
                shape: vec![1],
                data: vec![0.0],
            }],
        )
    }
    fn apply_calibration(
        &mut self,
        _: &bevrt_calib::Calibration,
        _: &str,
    ) -> anyhow::Result<String> {
        Ok(String::new())
    }
    fn calibration(&self) -> Option<&bevrt_calib::Calibration> {
        None
    }
}

/// Records the sequence numbers it was given, slowly if asked.
struct Recorder(Arc<std::sync::Mutex<Vec<u64>>>);
impl Sink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(r.seq);
        Ok(())
    }
}

fn source(total: u64, fps: f64, bad_every: Option<u64>) -> Box<dyn FrameSource> {
    Box::new(Counter {
        n: 0,
        total,
        pacer: Pacer::new(fps),
        bad_every,
    })
}

#[test]
fn live_source_faster_than_inference_drops_oldest_and_counts() {
    let be = Box::new(SlowBackend {
        delay: Duration::from_millis(10),
        fail_on: None,
        last: 0,
    });
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let r = pipeline::run(
        source(200, 400.0, None),
        be,
        vec![Box::new(Recorder(seen.clone()))],
        &PipelineOptions::default(),
    )
    .unwrap();
    assert_eq!(r.frames_captured, 200);
    assert!(r.frames_dropped > 50, "{r:?}");
    assert_eq!(
        r.frames_processed + r.frames_dropped,
        200,
        "every frame processed or counted"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "frames stay in order");
    assert_eq!(
        *seen.last().unwrap(),
        199,
        "the newest frame is never the one dropped"
    );
}

#[test]
fn file_source_is_lossless_when_inference_is_slow() {
    let be = Box::new(SlowBackend {
        delay: Duration::from_millis(2),
        fail_on: None,
        last: 0,
    });
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let r = pipeline::run(
        source(100, 0.0, None),
        be,
        vec![Box::new(Recorder(seen.clone()))],
        &PipelineOptions::default(),
    )
    .unwrap();
    assert_eq!((r.frames_processed, r.frames_dropped), (100, 0));
    assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<u64>>());
}

#[test]
fn slow_sink_drops_sink_work_not_frames() {
    let be = Box::new(SlowBackend {
        delay: Duration::ZERO,
        fail_on: None,
        last: 0,
    });
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let opts = PipelineOptions {
        sink_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let r = pipeline::run(
        source(100, 0.0, None),
        be,
        vec![Box::new(Recorder(seen.clone()))],
        &opts,
    )
    .unwrap();
    assert_eq!(r.frames_processed, 100);
    assert!(r.sink_dropped > 0, "{r:?}");
    assert_eq!(r.sink_written + r.sink_dropped, 100);
    assert_eq!(seen.lock().unwrap().len() as u64, r.sink_written);
}

#[test]
fn bad_frames_and_failed_inference_are_counted_and_skipped() {
    let be = Box::new(SlowBackend {
        delay: Duration::from_millis(1),
        fail_on: Some(7),
        last: 0,
    });
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let r = pipeline::run(
        source(50, 0.0, Some(10)),
        be,
        vec![Box::new(Recorder(seen.clone()))],
        &PipelineOptions::default(),
    )
    .unwrap();
    // frames 9, 19, 29, 39, 49 are corrupt; frame 7 fails in the model
    assert_eq!(r.source_errors, 5);
    assert_eq!(r.inference_errors, 1);
    assert_eq!(r.frames_processed, 44);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, r.sink_written);
    assert_eq!(r.sink_written + r.sink_dropped, 44);
    for bad in [7, 9, 19, 49] {
        assert!(
            !seen.contains(&bad),
            "frame {bad} should not reach the sinks"
        );
    }
}

#[test]
fn max_frames_and_duration_stop_a_live_source() {
    let be = Box::new(SlowBackend {
        delay: Duration::ZERO,
        fail_on: None,
        last: 0,
    });
    let opts = PipelineOptions {
        max_frames: Some(20),
        ..Default::default()
    };
    let r = pipeline::run(source(u64::MAX, 500.0, None), be, vec![], &opts).unwrap();
    assert_eq!(r.frames_processed, 20);
    assert_eq!(r.ended_by, "max frames");
    let be = Box::new(SlowBackend {
        delay: Duration::ZERO,
        fail_on: None,
        last: 0,
    });
    let opts = PipelineOptions {
        duration: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let r = pipeline::run(source(u64::MAX, 100.0, None), be, vec![], &opts).unwrap();
    assert_eq!(r.ended_by, "duration");
    assert!((10..=40).contains(&r.frames_processed), "{r:?}");
}
