//! Trust and faults: signed bundles (minisign format, interop with Debian's `minisign`), the
//! A/B store (deploy, self-test, trial, rollback, journal) and power loss during a deploy.

use bevrt_models::signature::{self, SIGNATURE_FILE};
use bevrt_models::store::Store;
use bevrt_runtime::supervisor::{self, LoadConfig, ModelUpdates, UpdateEvent};
use bevrt_runtime::{Backend, BackendKind, BackendOptions};
use bevrt_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A key pair on disk: (public key file, secret key file).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (pk, sk) = signature::generate_keypair(None).expect("keygen");
    let (pp, sp) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&pp, pk).unwrap();
    std::fs::write(&sp, sk).unwrap();
    (pp, sp)
}

fn sign(bundle: &Path, sk: &Path) {
    let key = signature::load_secret_key(sk, None).expect("secret key");
    signature::sign_bundle(bundle, &key).expect("sign");
}

fn pubkey(p: &Path) -> signature::PublicKey {
    signature::load_public_key(&p.to_string_lossy()).expect("public key")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn a_signed_bundle_refuses_any_altered_byte_extra_file_or_other_key() {
    let d = scratch("trust-alter");
    let (pk, sk) = keypair(&d, "k");
    let b = tiny_features_bundle(&d.join("b"), 1, "1.0.0", true);
    sign(&b, &sk);
    let key = pubkey(&pk);
    signature::load_trusted(&b, &key).expect("signed bundle loads");

    // One flipped byte at the start, middle and end of every file, manifest and signature too.
    // (The signature file's first line is minisign's *untrusted* comment, free text by the
    // format's design: its bytes are probed from the second line on.)
    let files = files_under(&b);
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let orig = std::fs::read(f).unwrap();
        let start = if f.ends_with(SIGNATURE_FILE) {
            orig.iter().position(|&c| c == b'\n').unwrap() + 1
        } else {
            0
        };
        let end = orig.len() - if f.ends_with(SIGNATURE_FILE) { 2 } else { 1 };
        for pos in [start, (start + end) / 2, end] {
            let mut bytes = orig.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(f, &bytes).unwrap();
            let r = signature::load_trusted(&b, &key);
            assert!(
                r.is_err(),
                "{} byte {pos} altered, still loaded",
                f.display()
            );
        }
        std::fs::write(f, &orig).unwrap();
    }
    signature::load_trusted(&b, &key).expect("restored bundle loads again");

    let extra = b.join("selftest/extra.bin");
    std::fs::write(&extra, b"x").unwrap();
    let e = signature::load_trusted(&b, &key).unwrap_err().to_string();
    assert!(e.contains("extra.bin") && e.contains("not named"), "{e}");
    std::fs::remove_file(&extra).unwrap();

    let (other_pk, _) = keypair(&d, "other");
    let e = signature::load_trusted(&b, &pubkey(&other_pk))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(SIGNATURE_FILE) && e.contains("not by the trusted key"),
        "{e}"
    );

    std::fs::remove_file(b.join(SIGNATURE_FILE)).unwrap();
    let e = signature::load_trusted(&b, &key).unwrap_err().to_string();
    assert!(e.contains("unsigned bundle"), "{e}");

    // The same refusal from the command line, naming the file.
    let (ok, _, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--trust",
            pk.to_str().unwrap(),
            "--source",
            "sim:?seed=1",
            "--max-frames",
            "1",
        ],
    );
    assert!(
        !ok && se.contains(SIGNATURE_FILE) && se.contains("unsigned"),
        "{se}"
    );
}

fn minisign_cli() -> Option<PathBuf> {
    let found = Command::new("minisign").arg("-v").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_MINISIGN").is_none(),
            "BEVRT_REQUIRE_MINISIGN is set but `minisign` is not on PATH"
        );
        eprintln!("SKIP: Debian's `minisign` is not installed (.ci/run installs it)");
        return None;
    }
    Some(PathBuf::from("minisign"))
}

#[test]
fn minisign_cli_and_bevrt_verify_each_others_signatures() {
    let Some(mini) = minisign_cli() else { return };
    let d = scratch("trust-interop");
    let b = tiny_features_bundle(&d.join("b"), 2, "1.0.0", false);
    let manifest = b.join("bundle.toml");

    // minisign signs (its own unencrypted key), bevrt verifies.
    let (mpk, msk) = (d.join("mini.pub"), d.join("mini.key"));
    let st = Command::new(&mini)
        .args([
            "-G",
            "-W",
            "-p",
            mpk.to_str().unwrap(),
            "-s",
            msk.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st = Command::new(&mini)
        .args([
            "-S",
            "-s",
            msk.to_str().unwrap(),
            "-m",
            manifest.to_str().unwrap(),
            "-t",
            "signed by minisign",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "minisign -S: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let s =
        signature::load_trusted(&b, &pubkey(&mpk)).expect("bevrt verifies minisign's signature");
    assert_eq!(s.trusted_comment, "signed by minisign");
    // bevrt also signs with minisign's secret key.
    sign(&b, &msk);
    signature::load_trusted(&b, &pubkey(&mpk)).expect("bevrt signature with minisign's key");

    // bevrt signs (its own key, through the CLI), minisign verifies; an altered manifest fails.
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &["keygen", "--out", d.join("bevrt").to_str().unwrap()],
    );
    assert!(ok, "{so}{se}");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "bundle",
            "sign",
            b.to_str().unwrap(),
            "--key",
            d.join("bevrt.key").to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}{se}");
    let verify = |pk: &Path| {
        Command::new(&mini)
            .args([
                "-V",
                "-p",
                pk.to_str().unwrap(),
                "-m",
                manifest.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let out = verify(&d.join("bevrt.pub"));
    assert!(
        out.status.success(),
        "minisign -V of bevrt's signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bevrt bundle tiny 1.0.0"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("1.0.0", "1.0.1")).unwrap();
    assert!(
        !verify(&d.join("bevrt.pub")).status.success(),
        "minisign accepted an altered manifest"
    );
}

#[test]
fn encrypted_secret_keys_need_their_password() {
    let d = scratch("trust-password");
    let pw = d.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let prefix = d.join("enc");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "keygen",
            "--out",
            prefix.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert!(ok && so.contains("(encrypted)"), "{so}{se}");
    let key = d.join("enc.key");
    let e = signature::load_secret_key(&key, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("enc.key") && e.contains("encrypted"), "{e}");
    let e = signature::load_secret_key(&key, Some("wrong".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("enc.key"), "{e}");
    signature::load_secret_key(&key, Some("correct horse".into())).expect("right password");
    // keygen refuses to overwrite a key.
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &["keygen", "--out", prefix.to_str().unwrap()],
    );
    assert!(!ok && se.contains("already exists"), "{se}");
}

fn cpu_config(trust: Option<signature::PublicKey>) -> LoadConfig {
    LoadConfig {
        kind: BackendKind::Cpu,
        options: BackendOptions {
            threads: 1,
            ..Default::default()
        },
        calibration: None,
        trust,
        trial_frames: 5,
        max_errors: 1,
    }
}

/// The embedding a backend gives for the self-test image (tells bundles apart).
fn embedding(be: &mut Box<dyn Backend>) -> Vec<f32> {
    let rgb = bevrt_runtime::selftest::test_image(32, 32);
    let mut f = bevrt_runtime::Frame::with_capacity(rgb.len());
    f.reset(bevrt_runtime::PixelFormat::Rgb8, 32, 32);
    f.data.copy_from_slice(&rgb);
    be.preprocess(&f).unwrap();
    be.infer().unwrap();
    let mut r = be.new_result();
    be.postprocess(&mut r).unwrap();
    r.outputs[0].data.clone()
}

#[test]
fn store_deploys_confirms_and_rolls_back_with_a_journal() {
    let d = scratch("store-cycle");
    let (pk, sk) = keypair(&d, "k");
    let a = tiny_features_bundle(&d.join("a"), 10, "1.0.0", true);
    let b = tiny_features_bundle(&d.join("b"), 20, "2.0.0", true);
    let unsigned = tiny_features_bundle(&d.join("u"), 30, "3.0.0", true);
    sign(&a, &sk);
    sign(&b, &sk);
    let store = Store::open(&d.join("store"), true).unwrap();
    store.set_trust_key(&pk).unwrap();

    let (slot_a, _) = store.deploy(&a, None, Default::default()).unwrap();
    let act = store.load_active(None).unwrap();
    assert!(act.trial && act.slot == slot_a && act.signed_by.is_some());
    // A second deploy while the first is on trial would overwrite its fallback.
    let e = store
        .deploy(&b, None, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("on trial"), "{e}");
    assert!(store.confirm(act.generation, "test").unwrap());

    // Unsigned bundles never enter a store that trusts a key.
    let e = store
        .deploy(&unsigned, None, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsigned bundle"), "{e}");

    let (slot_b, _) = store.deploy(&b, None, Default::default()).unwrap();
    assert_ne!(slot_a, slot_b);
    let act = store.load_active(None).unwrap();
    assert_eq!(act.bundle.manifest.version, "2.0.0");
    let now = store.rollback(act.generation, "test reason").unwrap();
    assert_eq!(now, slot_a);
    assert_eq!(
        store.load_active(None).unwrap().bundle.manifest.version,
        "1.0.0"
    );

    // A slot changed behind the store's back is refused, even with its digests fixed.
    let slot_dir = store.slot_dir(&slot_a);
    let m = slot_dir.join("bundle.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("test features network", "tampered")).unwrap();
    assert!(store.load_active(None).is_err());
    std::fs::write(&m, text).unwrap();

    let events: Vec<String> = store
        .journal()
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        [
            "deploy", "refused", "confirm", "refused", "deploy", "rollback"
        ],
        "{events:?}"
    );
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "store",
            "status",
            "--store",
            store.dir.to_str().unwrap(),
            "--verify",
        ],
    );
    assert!(
        ok && so.contains("active slot a") && so.contains("rollback") && so.contains("test reason"),
        "{so}{se}"
    );
}

/// A validly signed *older* bundle cannot replace a newer confirmed one (the rollback attack
/// TUF and Uptane stop): refused with both versions named, the store left as it was and the
/// journal saying why; `--allow-downgrade` lets it in and the journal records the downgrade.
#[test]
fn a_signed_older_bundle_is_refused_after_a_newer_one_was_confirmed() {
    let d = scratch("store-downgrade");
    let (pk, sk) = keypair(&d, "k");
    let new = tiny_features_bundle(&d.join("new"), 25, "2.0.0", true);
    let old = tiny_features_bundle(&d.join("old"), 15, "1.0.0", true);
    let rc = tiny_features_bundle(&d.join("rc"), 35, "2.0.0-rc.1", true);
    let odd = tiny_features_bundle(&d.join("odd"), 45, "nightly", true);
    let next = tiny_features_bundle(&d.join("next"), 55, "2.0.1", true);
    for b in [&new, &old, &rc, &odd, &next] {
        sign(b, &sk);
    }
    let store_dir = d.join("store");
    let store = Store::open(&store_dir, true).unwrap();
    store.set_trust_key(&pk).unwrap();
    store.deploy(&new, None, Default::default()).unwrap();
    // Before any confirmation nothing is recorded: the first bundle may be replaced freely.
    assert!(store.state().unwrap().unwrap().highest_confirmed.is_empty());
    let g = store.state().unwrap().unwrap().generation;
    assert!(store.confirm(g, "test").unwrap());
    let high = |s: &Store| s.state().unwrap().unwrap().highest_confirmed["tiny"].clone();
    assert_eq!(high(&store), "2.0.0");

    let tool = bin("bevrt-tool");
    let deploy = |b: &Path, extra: &[&str]| {
        let mut args = vec!["deploy", "--store", store_dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(b.to_str().unwrap());
        run(&tool, &args)
    };
    for (b, why) in [
        (&old, "tiny 1.0.0 is older than tiny 2.0.0"),
        (&rc, "tiny 2.0.0-rc.1 is older than tiny 2.0.0"),
        (&odd, "tiny nightly cannot be ordered against tiny 2.0.0"),
    ] {
        let (ok, so, se) = deploy(b, &[]);
        assert!(!ok, "{so}{se}");
        assert!(se.contains(why) && se.contains("--allow-downgrade"), "{se}");
        assert_eq!(se.trim().lines().count(), 1, "one-line error: {se}");
        // The store is untouched: 2.0.0 still active, confirmed, loadable.
        let act = store.load_active(None).unwrap();
        assert!(!act.trial && act.bundle.manifest.version == "2.0.0");
        let last = store.journal().unwrap().pop().unwrap();
        assert!(
            last.event == "refused" && last.detail.contains(why),
            "{last:?}"
        );
    }

    // Forced: it goes in, on trial, and the journal says it was a downgrade.
    let (ok, so, se) = deploy(&old, &["--allow-downgrade"]);
    assert!(ok, "{so}{se}");
    let act = store.load_active(None).unwrap();
    assert!(act.trial && act.bundle.manifest.version == "1.0.0");
    let j = store.journal().unwrap();
    let tail: Vec<&str> = j[j.len() - 2..].iter().map(|e| e.event.as_str()).collect();
    assert_eq!(tail, ["downgrade", "deploy"]);
    assert!(j[j.len() - 2].detail.contains("older than tiny 2.0.0"));
    // Confirming the downgrade does not lower the record: 2.0.0 may come back, 1.x may not.
    assert!(store.confirm(act.generation, "test").unwrap());
    assert_eq!(high(&store), "2.0.0");
    let (ok, _, se) = deploy(&old, &[]);
    assert!(!ok && se.contains("older than tiny 2.0.0"), "{se}");
    let (ok, so, se) = deploy(&next, &[]);
    assert!(ok, "{so}{se}");
    let g = store.state().unwrap().unwrap().generation;
    assert!(store.confirm(g, "test").unwrap());
    assert_eq!(high(&store), "2.0.1");

    // The record survives a reopen (it lives in state.toml, written like the switch), and a
    // slot whose manifest is edited by hand to claim a newer version is refused at load.
    let reopened = Store::open(&store_dir, false).unwrap();
    assert_eq!(high(&reopened), "2.0.1");
    let act = reopened.load_active(None).unwrap();
    let m = reopened.slot_dir(&act.slot).join("bundle.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text.replace("version = \"2.0.1\"", "version = \"9.0.0\""),
    )
    .unwrap();
    assert!(reopened.load_active(None).is_err());
    std::fs::write(&m, text).unwrap();
    let (ok, so, se) = run(
        &tool,
        &["store", "status", "--store", store_dir.to_str().unwrap()],
    );
    assert!(
        ok && so.contains("highest confirmed tiny 2.0.1"),
        "{so}{se}"
    );
}

/// Rewrite a bundle's first self-test output (as a tampering or mis-built bundle would) and
/// fix its digest, so only the self-test can notice.
fn corrupt_selftest(b: &Path) {
    let p = b.join("selftest/output0.npy");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    for x in &mut bytes[n - 64..] {
        *x = 0x41; // 0x41414141 = 12.07 as f32
    }
    std::fs::write(&p, bytes).unwrap();
    let digest = bevrt_models::sha256_file(&p).unwrap();
    let m = b.join("bundle.toml");
    let mut man = bevrt_models::Bundle::load_unverified(b).unwrap().manifest;
    man.selftest.as_mut().unwrap().outputs[0].sha256 = digest;
    std::fs::write(&m, man.to_toml()).unwrap();
}

#[test]
fn a_bundle_failing_its_self_test_is_rolled_back_at_start() {
    let d = scratch("store-selftest");
    let a = tiny_features_bundle(&d.join("a"), 11, "1.0.0", true);
    let b = tiny_features_bundle(&d.join("b"), 21, "2.0.0", true);
    corrupt_selftest(&b);
    let store = Store::open(&d.join("store"), true).unwrap();
    store.deploy(&a, None, Default::default()).unwrap();
    let g = store.state().unwrap().unwrap().generation;
    store.confirm(g, "test").unwrap();
    store.deploy(&b, None, Default::default()).unwrap();

    let loaded = supervisor::start(&store, &cpu_config(None)).expect("falls back to a");
    assert_eq!(loaded.active.bundle.manifest.version, "1.0.0");
    let j = store.journal().unwrap();
    let last = j.last().unwrap();
    assert_eq!(last.event, "rollback");
    assert!(
        last.detail.contains("self-test output 0") && last.detail.contains("output0.npy"),
        "{}",
        last.detail
    );
}

#[test]
fn supervisor_swaps_in_a_deploy_and_rolls_back_after_failed_frames() {
    let d = scratch("store-supervise");
    let a = tiny_features_bundle(&d.join("a"), 12, "1.0.0", true);
    let b = tiny_features_bundle(&d.join("b"), 22, "2.0.0", true);
    let c = tiny_features_bundle(&d.join("c"), 32, "3.0.0", true);
    let store = Store::open(&d.join("store"), true).unwrap();
    store.deploy(&a, None, Default::default()).unwrap();
    let cfg = cpu_config(None);
    let first = supervisor::start(&store, &cfg).unwrap();
    let mut sup = supervisor::StoreSupervisor::new(store.clone(), cfg, &first).unwrap();
    let mut be = first.backend;
    let emb_a = embedding(&mut be);

    // a is on trial: five good frames confirm it.
    for _ in 0..5 {
        assert_eq!(sup.between_frames(&mut be), None);
        sup.frame_done(true);
    }
    assert_eq!(sup.between_frames(&mut be), Some(UpdateEvent::Confirmed));
    assert!(!store.state().unwrap().unwrap().trial);

    // b deployed while running: loaded in the background, swapped in between frames.
    store.deploy(&b, None, Default::default()).unwrap();
    let swapped = wait_for(&mut sup, &mut be, UpdateEvent::Swapped);
    assert!(swapped, "b was not swapped in");
    assert_ne!(embedding(&mut be), emb_a);
    // Two failed frames (more than max_errors = 1): a is back at once, the store agrees.
    sup.frame_done(false);
    sup.frame_done(false);
    assert_eq!(sup.between_frames(&mut be), Some(UpdateEvent::RolledBack));
    assert_eq!(embedding(&mut be), emb_a);
    let s = store.state().unwrap().unwrap();
    assert!(!s.trial && s.slots[&s.active].version == "1.0.0");
    let last = store.journal().unwrap().pop().unwrap();
    assert!(
        last.event == "rollback" && last.detail.contains("inference errors"),
        "{last:?}"
    );

    // c, whose self-test fails, is refused while a keeps running, and the store rolls back.
    corrupt_selftest(&c);
    store.deploy(&c, None, Default::default()).unwrap();
    assert!(wait_for(&mut sup, &mut be, UpdateEvent::Refused));
    assert_eq!(embedding(&mut be), emb_a);
    let s = store.state().unwrap().unwrap();
    assert_eq!(s.slots[&s.active].version, "1.0.0");
}

fn wait_for(
    sup: &mut supervisor::StoreSupervisor,
    be: &mut Box<dyn Backend>,
    want: UpdateEvent,
) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        match sup.between_frames(be) {
            Some(e) if e == want => return true,
            Some(e) => panic!("expected {want:?}, got {e:?}"),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn bevrt_run_from_a_store_confirms_then_swaps_in_a_deploy_while_running() {
    let d = scratch("store-run");
    let (pk, sk) = keypair(&d, "k");
    let a = tiny_features_bundle(&d.join("a"), 13, "1.0.0", true);
    let b = tiny_features_bundle(&d.join("b"), 23, "2.0.0", true);
    sign(&a, &sk);
    sign(&b, &sk);
    let store = d.join("store");
    let tool = bin("bevrt-tool");
    let (ok, so, se) = run(
        &tool,
        &[
            "deploy",
            "--store",
            store.to_str().unwrap(),
            "--trust",
            pk.to_str().unwrap(),
            a.to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}{se}");
    let out = d.join("out");
    let child = Command::new(bin("bevrt"))
        .args([
            "run",
            "--store",
            store.to_str().unwrap(),
            "--source",
            "sim:?seed=3&fps=60",
            "--backend",
            "cpu",
            "--threads",
            "1",
            "--duration",
            "14",
            "--trial-frames",
            "10",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a's confirmation, then deploy b into the running store.
    let st = Store::open(&store, false).unwrap();
    let t0 = Instant::now();
    while st.state().unwrap().unwrap().trial && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, so, se) = run(
        &tool,
        &[
            "deploy",
            "--store",
            store.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}{se}");
    let o = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{se}");
    let r: serde_json::Value = serde_json::from_str(&so).expect("report");
    assert_eq!(r["model_swaps"], 1, "{se}");
    assert_eq!(r["model_rollbacks"], 0, "{se}");
    let events: Vec<String> = st.journal().unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(events, ["deploy", "confirm", "deploy", "confirm"], "{se}");
}

/// Power loss during a deploy: the deploying process is SIGKILLed at 100 distinct points
/// drawn from every crash point of a deploy (mid-copy, after each fsync, around the slot rename and the
/// state switch). Each time the store must load a complete, verified bundle, the old or the
/// new one, and a later deploy must succeed.
#[test]
fn a_deploy_killed_at_100_points_leaves_a_complete_verified_store() {
    use std::os::unix::process::ExitStatusExt;
    let d = scratch("store-powerloss");
    let (pk, sk) = keypair(&d, "k");
    let a = tiny_features_bundle(&d.join("a"), 14, "1.0.0", false);
    let b = tiny_features_bundle(&d.join("b"), 24, "2.0.0", false);
    sign(&a, &sk);
    sign(&b, &sk);
    let base = d.join("base");
    let store = Store::open(&base, true).unwrap();
    store.set_trust_key(&pk).unwrap();
    store.deploy(&a, None, Default::default()).unwrap();
    store
        .confirm(store.state().unwrap().unwrap().generation, "base")
        .unwrap();
    let key = pubkey(&pk);
    let tool = bin("bevrt-tool");
    let deploy = |dir: &Path, kill_at: Option<u64>, count: Option<&Path>| {
        let mut c = Command::new(&tool);
        c.args([
            "deploy",
            "--store",
            dir.to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        c.env("RUST_LOG", "warn");
        if let Some(k) = kill_at {
            c.env("BEVRT_FAULT_KILL_AT", k.to_string());
        }
        if let Some(p) = count {
            c.env("BEVRT_FAULT_COUNT_FILE", p);
        }
        c.output().unwrap()
    };
    let copy = |to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        let st = Command::new("cp")
            .args(["-a", base.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    // How many crash points a whole deploy passes.
    let probe = d.join("probe");
    copy(&probe);
    let count_file = d.join("count");
    let o = deploy(&probe, None, Some(&count_file));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let total: u64 = std::fs::read_to_string(&count_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        total >= 100,
        "only {total} crash points: the copy is not exercised"
    );

    // 100 distinct kill points: the last 6 (the slot rename and the state switch) and 94
    // drawn from the rest (seeded shuffle, the same every run).
    let mut points: Vec<u64> = (1..=total - 6).collect();
    let mut rng = 0x9E3779B97F4A7C15u64;
    for i in (1..points.len()).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        points.swap(i, (rng % (i as u64 + 1)) as usize);
    }
    points.truncate(94);
    points.extend(total - 5..=total);
    points.sort();
    let (mut old, mut new) = (0, 0);
    for (i, &k) in points.iter().enumerate() {
        let s = d.join("s");
        copy(&s);
        let o = deploy(&s, Some(k), None);
        assert_eq!(
            o.status.signal(),
            Some(9),
            "kill point {k}/{total} was not reached: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let st = Store::open(&s, false).unwrap();
        let act = st
            .load_active(Some(&key))
            .unwrap_or_else(|e| panic!("kill at {k}/{total}: store does not load: {e}"));
        let v = act.bundle.manifest.version.clone();
        match v.as_str() {
            "1.0.0" => old += 1,
            "2.0.0" => new += 1,
            _ => panic!("kill at {k}: version {v}"),
        }
        // Every byte the active slot holds is the deployed bundle's (no mix of old and new).
        let src = if v == "1.0.0" { &a } else { &b };
        for f in files_under(src) {
            let rel = f.strip_prefix(src).unwrap();
            assert_eq!(
                std::fs::read(&f).unwrap(),
                std::fs::read(act.bundle.dir.join(rel)).unwrap(),
                "kill at {k}: {} differs",
                rel.display()
            );
        }
        if i % 10 == 0 {
            // The store recovers: the deploy, run again, completes.
            let o = deploy(&s, None, None);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.success() || err.contains("on trial"),
                "redeploy after kill at {k}: {err}"
            );
        }
    }
    eprintln!(
        "100 kill points over {total} crash points: {old} left the old bundle active, {new} the new one"
    );
    assert!(
        old > 0 && new > 0,
        "old {old}, new {new}: the kills did not straddle the switch"
    );
}

/// A trust set's TOML, for `roots` and `signers` (public key files), `revoked` key files.
fn trust_set_toml(
    version: u64,
    expires: &str,
    roots: &[&Path],
    signers: &[(&Path, Option<&str>)],
    revoked: &[&Path],
) -> String {
    let id = |p: &Path| signature::key_id(pubkey(p).keynum());
    let mut t = format!("format = 1\nversion = {version}\nexpires = {expires}\nrevoked = [");
    t += &revoked
        .iter()
        .map(|p| format!("\"{}\"", id(p)))
        .collect::<Vec<_>>()
        .join(", ");
    t += "]\n";
    for r in roots {
        t += &format!("\n[[root]]\nkey = \"{}\"\n", pubkey(r).to_base64());
    }
    for (s, exp) in signers {
        t += &format!("\n[[signer]]\nkey = \"{}\"\n", pubkey(s).to_base64());
        if let Some(e) = exp {
            t += &format!("expires = {e}\n");
        }
    }
    t
}

/// Write `text` as `dir/NAME.toml` and sign it with `sk`.
fn signed_trust_set(dir: &Path, name: &str, text: &str, sk: &Path) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    let key = signature::load_secret_key(sk, None).unwrap();
    signature::sign_file(&p, &key, "bevrt trust set").unwrap();
    p
}

/// `bevrt-tool ARGS` with the clock at `now` (Unix seconds) when given.
fn tool_at(now: Option<i64>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(bin("bevrt-tool"));
    c.args(args);
    if let Some(t) = now {
        c.env("BEVRT_NOW_UNIX", t.to_string());
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Give a bundle a manifest `expires` (before it is signed).
fn set_expiry(bundle: &Path, when: &str) {
    let m = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    let (head, tail) = text
        .split_once("\n[")
        .expect("a table after the top-level keys");
    std::fs::write(&m, format!("{head}\nexpires = {when}\n[{tail}")).unwrap();
}

#[test]
fn trust_sets_rotate_revoke_and_expire_keys_and_the_store_stays_loadable() {
    let d = scratch("store-trust-set");
    let (root, root_sk) = keypair(&d, "root");
    let (a, a_sk) = keypair(&d, "a");
    let (b, b_sk) = keypair(&d, "b");
    let (x, x_sk) = keypair(&d, "foreign");
    let v1 = tiny_features_bundle(&d.join("v1"), 11, "1.0.0", true);
    let v2 = tiny_features_bundle(&d.join("v2"), 12, "2.0.0", true);
    let v3 = tiny_features_bundle(&d.join("v3"), 13, "3.0.0", true);
    let foreign = tiny_features_bundle(&d.join("foreign"), 14, "9.0.0", true);
    let stale = tiny_features_bundle(&d.join("stale"), 15, "4.0.0", true);
    set_expiry(&stale, "2020-01-01");
    for (bundle, sk) in [
        (&v1, &a_sk),
        (&v2, &b_sk),
        (&v3, &a_sk),
        (&foreign, &x_sk),
        (&stale, &b_sk),
    ] {
        sign(bundle, sk);
    }
    let store_dir = d.join("store");
    let st = store_dir.to_str().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let store = Store::open(&store_dir, true).unwrap();
    let id = |p: &Path| signature::key_id(pubkey(p).keynum());
    let version_active = || store.load_active(None).unwrap().bundle.manifest.version;
    let confirm = || {
        let g = store.state().unwrap().unwrap().generation;
        assert!(store.confirm(g, "test").unwrap());
    };
    let last_journal = || store.journal().unwrap().pop().unwrap();
    let refused = |out: (bool, String, String), why: &str| {
        let (ok, so, se) = out;
        assert!(!ok && se.contains(why), "expected '{why}':\n{so}{se}");
        assert_eq!(se.trim().lines().count(), 1, "one-line error: {se}");
    };

    // Provisioning: the first set needs its root out of band.
    let t1 = signed_trust_set(
        &d,
        "t1",
        &trust_set_toml(1, "2099-01-01", &[&root], &[(&a, None)], &[]),
        &root_sk,
    );
    refused(
        tool_at(None, &["trust", "install", "--store", st, &s(&t1)]),
        "--root",
    );
    let (ok, so, se) = tool_at(
        None,
        &[
            "trust",
            "install",
            "--store",
            st,
            "--root",
            &s(&root),
            &s(&t1),
        ],
    );
    assert!(ok && so.contains("trust set version 1"), "{so}{se}");
    assert_eq!(last_journal().event, "trust");
    // Debian's minisign verifies a trust set's signature as it does a bundle's.
    if let Some(mini) = minisign_cli() {
        let out = Command::new(mini)
            .args(["-Vm", &s(&t1), "-P", &pubkey(&root).to_base64()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let deploy =
        |bundle: &Path, now: Option<i64>| tool_at(now, &["deploy", "--store", st, &s(bundle)]);
    let (ok, so, se) = deploy(&v1, None);
    assert!(ok, "{so}{se}");
    confirm();
    // A foreign key, and a signer the set does not (yet) list, are refused; the store keeps
    // running 1.0.0 and the journal says why.
    refused(
        deploy(&foreign, None),
        &format!(
            "signed by key {}, not a signer of trust set version 1",
            id(&x)
        ),
    );
    refused(
        deploy(&v2, None),
        &format!("signed by key {}, not a signer", id(&b)),
    );
    assert_eq!(last_journal().event, "refused");
    assert_eq!(version_active(), "1.0.0");

    // Rotation: set 2 adds key b (signed by the root); b's bundle deploys; no downtime.
    let t2 = signed_trust_set(
        &d,
        "t2",
        &trust_set_toml(
            2,
            "2099-01-01",
            &[&root],
            &[(&a, None), (&b, Some("2098-01-01"))],
            &[],
        ),
        &root_sk,
    );
    let (ok, so, se) = tool_at(None, &["trust", "install", "--store", st, &s(&t2)]);
    assert!(ok, "{so}{se}");
    assert_eq!(version_active(), "1.0.0");
    let (ok, so, se) = deploy(&v2, None);
    assert!(ok, "{so}{se}");
    confirm();
    assert_eq!(version_active(), "2.0.0");

    // Trust sets that must not go in: a replay of set 1, one signed by a signing key instead
    // of a root, one altered after signing. Set 2 stays.
    refused(
        tool_at(None, &["trust", "install", "--store", st, &s(&t1)]),
        "not newer than the installed version 2",
    );
    let by_a = signed_trust_set(
        &d,
        "by-a",
        &trust_set_toml(5, "2099-01-01", &[&a], &[(&a, None)], &[]),
        &a_sk,
    );
    refused(
        tool_at(None, &["trust", "install", "--store", st, &s(&by_a)]),
        "not a root allowed to sign it",
    );
    let tampered = signed_trust_set(
        &d,
        "tampered",
        &trust_set_toml(6, "2099-01-01", &[&root], &[(&a, None)], &[]),
        &root_sk,
    );
    let text = std::fs::read_to_string(&tampered).unwrap();
    std::fs::write(&tampered, text.replace("version = 6", "version = 7")).unwrap();
    refused(
        tool_at(None, &["trust", "install", "--store", st, &s(&tampered)]),
        "signature check failed",
    );
    assert_eq!(store.trust_set().unwrap().unwrap().version, 2);

    // Expiry: of a bundle's manifest, of a signing key, of the whole set.
    refused(deploy(&stale, None), "expired at 2020-01-01T00:00:00Z");
    let in_2098_june = 4_054_233_600; // 2098-06-21

    // Revocation: 3.0.0 signed by a runs (previous slot 2.0.0, signed by b); set 3 revokes a.
    let (ok, so, se) = deploy(&v3, None);
    assert!(ok, "{so}{se}");
    confirm();
    assert_eq!(version_active(), "3.0.0");
    let t3 = signed_trust_set(
        &d,
        "t3",
        &trust_set_toml(
            3,
            "2099-01-01",
            &[&root],
            &[(&b, Some("2098-01-01"))],
            &[&a],
        ),
        &root_sk,
    );
    let (ok, so, se) = tool_at(None, &["trust", "install", "--store", st, &s(&t3)]);
    assert!(ok && so.contains(&id(&a)), "{so}{se}");
    // The active slot is now unloadable; the next start falls back to 2.0.0 and says why.
    let e = store.load_active(None).unwrap_err().to_string();
    assert!(e.contains("revokes"), "{e}");
    let loaded = supervisor::start(&store, &cpu_config(None)).unwrap();
    assert_eq!(loaded.active.bundle.manifest.version, "2.0.0");
    let rb = last_journal();
    assert!(
        rb.event == "rollback" && rb.detail.contains("revokes"),
        "{rb:?}"
    );
    refused(deploy(&v1, None), "revokes");

    // b's key expires 2098-01-01, the set 2099-01-01: deploys fail then, with the reason.
    refused(
        deploy(&v2, Some(in_2098_june)),
        "expired at 2098-01-01T00:00:00Z",
    );
    refused(
        deploy(&v2, Some(4_102_444_800 + 86_400)),
        "trust set version 3 expired at 2099-01-01T00:00:00Z",
    );
    // And the store, at today's date, still loads.
    assert_eq!(version_active(), "2.0.0");
    let (ok, so, se) = tool_at(None, &["store", "status", "--store", st, "--verify"]);
    assert!(
        ok && so.contains("trust set version 3") && so.contains("active slot verified"),
        "{so}{se}"
    );
}
