//! The simulator's recording plays back through `replay:` with exactly the frames the live
//! `sim:` source renders, and its ground truth and calibration are where the format says.

use bevrt_runtime::frame::Frame;
use bevrt_runtime::source::{self, SourceStatus};
use bevrt_tests::scratch;

#[test]
fn recorded_sequence_replays_byte_for_byte() {
    let work = scratch("sim-replay");
    let dir = work.join("rec");
    let cfg = bevrt_sim::SimConfig::with_seed(5);
    let summary = bevrt_sim::record(&cfg, 12, &dir, &Default::default(), &mut |_, _| {}).unwrap();
    eprintln!("{summary:?}");
    let mut replay = source::open(&format!("replay:{}", dir.display())).unwrap();
    let mut live = source::open("sim:?seed=5").unwrap();
    assert_eq!(
        replay.calibration_path(),
        Some(dir.join("calibration.toml")),
        "recording carries its calibration"
    );
    bevrt_calib::Calibration::load(dir.join("calibration.toml")).unwrap();
    let (mut a, mut b) = (Frame::with_capacity(0), Frame::with_capacity(0));
    for n in 0..12 {
        assert_eq!(replay.next_frame(&mut a).unwrap(), SourceStatus::Frame);
        assert_eq!(live.next_frame(&mut b).unwrap(), SourceStatus::Frame);
        assert_eq!((a.width, a.height, a.format), (b.width, b.height, b.format));
        assert!(
            a.data == b.data,
            "frame {n} differs between replay and sim:"
        );
        assert_eq!(a.seq, n);
        let gt = dir.join(format!("gt/{n:06}.png"));
        let g = image::open(&gt).unwrap().to_luma8();
        assert_eq!(g.dimensions(), (160, 160), "{}", gt.display());
        assert!(
            g.pixels().any(|p| p.0[0] == 0),
            "road visible in {}",
            gt.display()
        );
    }
    assert_eq!(replay.next_frame(&mut a).unwrap(), SourceStatus::End);
}
