//! The soak harness in CI: two minutes of the shipped letsmap-lite bundle at full rate from an
//! A/B store, with a bundle swap, a calibration reload, a camera unplug and a sink stall every
//! 15 s, watched from `/proc`. The hour-long run is `bevrt-tool hil --soak 1h` (README).

use bevrt_tests::*;

#[test]
fn two_minute_soak_recovers_every_fault_without_growth() {
    let out = scratch("soak");
    let bundle = workspace_root().join("models/bundles/letsmap-lite");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "hil",
            "--bundle",
            bundle.to_str().unwrap(),
            "--soak",
            "2m",
            "--fault-every",
            "15",
            // Two minutes hold only two swaps after warm-up, and each swap settles the
            // resident set up to ~0.7 MiB (2 %) higher or lower than the last (where the new
            // network's pages land; measured 2026-12-04, and CI once saw +8 % fitted before
            // calibration reloads stopped allocating). A leaked network per swap adds ~4 MiB
            // each (+20 % here) and is caught; the 1 % goal is the hour-long run's.
            "--max-rss-growth",
            "10",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "soak failed:\n{so}\n{se}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("soak/report.json")).unwrap())
            .unwrap();
    assert_eq!(r["ok"], true);
    assert!(r["deploys"].as_u64().unwrap() >= 3, "{so}");
    assert!(r["calibration_rewrites"].as_u64().unwrap() >= 2, "{so}");
    assert!(
        r["run"]["frames_processed"].as_u64().unwrap() > 1000,
        "{so}"
    );
    eprintln!("{so}");
}
