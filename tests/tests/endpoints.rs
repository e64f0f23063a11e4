//! The network endpoints (`--prometheus`, `--foxglove`) against hostile clients:
//!
//! - the HTTP request-head parser and the WebSocket frame reader under 10^6 fuzzed inputs each
//!   (a seeded mutation fuzzer over valid seeds: no panic, and the parsers' own invariants hold:
//!   bounds respected, a parsed head re-parses identically from its own bytes, a frame stream
//!   gives the same verdict however it is cut into reads);
//! - `bevrt run` at 20 fps with 200 slow-loris connections against each endpoint: the frame
//!   rate stays within 5 % of the same run without them, and a real scraper and a real viewer
//!   still get through.

use bevrt_runtime::serve::http::{self, MAX_HEAD, MAX_HEADERS};
use bevrt_runtime::serve::websocket::{ClientFrames, client_frame};
use bevrt_tests::{bin, free_port, scratch, workspace_root};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// splitmix64: a reproducible stream of random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`: flips, inserts of bytes and tokens, deletions, duplications,
/// splices with another seed.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[&[u8]]) {
    let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(7) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = at(rng, input);
            input.insert(i, rng.next() as u8);
        }
        2 => {
            let i = at(rng, input);
            let t = tokens[rng.below(tokens.len())];
            input.splice(i..i, t.iter().copied());
        }
        3 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = rng.below(input.len() - i + 1);
            input.drain(i..i + n);
        }
        4 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = rng.below((input.len() - i).min(64) + 1);
            let piece: Vec<u8> = input[i..i + n].to_vec();
            let j = at(rng, input);
            let times = 1 + rng.below(200);
            for _ in 0..times {
                input.splice(j..j, piece.iter().copied());
            }
        }
        5 => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(other.len() + 1);
            let i = at(rng, input);
            input.truncate(i);
            input.extend_from_slice(&other[cut..]);
        }
        _ => {
            let i = at(rng, input);
            input.truncate(i);
        }
    }
}

const FUZZ_INPUTS: usize = 1_000_000;

#[test]
fn http_request_parser_survives_a_million_fuzzed_heads() {
    let seeds: Vec<Vec<u8>> = [
        &b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nUser-Agent: Prometheus/2.53\r\nAccept: text/plain;version=0.0.4\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n",
        b"HEAD /healthz?x=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"\r\n\r\n",
        b":",
        b" ",
        b"\t",
        b"\n",
        b"HTTP/1.1",
        b"\x00",
        b"\x80",
        b"\xff",
        b"Content-Length: 18446744073709551616\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"X: y\r\n",
        b"/",
        b"?",
        b"%00",
    ];
    let mut rng = Rng(0x5EED_0001);
    let (mut parsed, mut partial, mut refused) = (0u64, 0u64, 0u64);
    for n in 0..FUZZ_INPUTS {
        let mut input = seeds[n % seeds.len()].clone();
        for _ in 0..1 + rng.below(6) {
            mutate(&mut rng, &mut input, &seeds, tokens);
        }
        match http::parse_head(&input) {
            Ok(Some(h)) => {
                parsed += 1;
                assert!(h.len <= input.len() && h.len <= MAX_HEAD, "{h:?}");
                assert!(h.headers.len() <= MAX_HEADERS);
                assert!(h.target.starts_with('/'));
                // The head alone parses to the same head.
                assert_eq!(http::parse_head(&input[..h.len]), Ok(Some(h)));
            }
            Ok(None) => {
                partial += 1;
                assert!(input.len() < MAX_HEAD, "a head over the limit left pending");
            }
            Err(e) => {
                refused += 1;
                assert!([400, 431, 501].contains(&e.status()));
            }
        }
    }
    eprintln!("{FUZZ_INPUTS} heads: {parsed} parsed, {partial} incomplete, {refused} refused");
    assert!(parsed > 1000 && refused > 1000 && partial > 1000);
}

#[test]
fn websocket_frame_reader_survives_a_million_fuzzed_streams() {
    let mut seeds = Vec::new();
    for (i, payload) in [&b"{\"op\":\"subscribe\"}"[..], &[0u8; 200], &[1u8; 70_000]]
        .iter()
        .enumerate()
    {
        let mut s = client_frame(
            i != 1,
            if i == 2 { 0 } else { 1 + (i as u8 & 1) },
            payload,
            [1, 2, 3, 4],
        );
        if i == 2 {
            s = client_frame(false, 2, &payload[..100], [4; 4]);
            s.extend(client_frame(true, 0, payload, [5; 4]));
        }
        s.extend(client_frame(true, 9, b"ping", [0; 4]));
        seeds.push(s);
    }
    let tokens: &[&[u8]] = &[
        &[0x81, 0x80],
        &[0x88, 0x82],
        &[0x02, 0xfe, 0xff, 0xff],
        &[0x82, 0xff],
        &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x00, 0x80, 0, 0, 0, 0],
    ];
    let mut rng = Rng(0x5EED_0002);
    let (mut ok, mut refused, mut bytes) = (0u64, 0u64, 0u64);
    for n in 0..FUZZ_INPUTS {
        let mut input = seeds[n % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &seeds, tokens);
        }
        input.truncate(200_000);
        bytes += input.len() as u64;
        let mut whole = ClientFrames::default();
        let verdict = whole.feed(&input);
        // Cut into random reads: the same verdict, at the same frame.
        let mut pieces = ClientFrames::default();
        let mut rest = &input[..];
        let mut cut_verdict = Ok(());
        while !rest.is_empty() && cut_verdict.is_ok() {
            let most = if rng.below(2) == 0 { 16 } else { 5000 };
            let k = 1 + rng.below(rest.len().min(most));
            cut_verdict = pieces.feed(&rest[..k]);
            rest = &rest[k..];
        }
        assert_eq!(verdict, cut_verdict, "input {n}");
        assert_eq!(whole.frames, pieces.frames, "input {n}");
        if verdict.is_ok() {
            ok += 1
        } else {
            refused += 1
        }
    }
    eprintln!(
        "{FUZZ_INPUTS} streams ({} MB): {ok} accepted, {refused} refused",
        bytes >> 20
    );
    assert!(ok > 1000 && refused > 1000);
}

/// Keeps `n` connections to `addr` open, each sending `start` and then one byte of a header
/// every 200 ms, reconnecting whenever the server closes one; returns connections made.
fn slow_loris(addr: String, n: usize, start: &'static [u8], stop: Arc<AtomicBool>) -> u64 {
    let connect = |made: &mut u64| {
        *made += 1;
        let s = TcpStream::connect(&addr).ok()?;
        s.set_write_timeout(Some(Duration::from_millis(100))).ok()?;
        (&s).write_all(start).ok()?;
        Some(s)
    };
    let mut made = 0u64;
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| connect(&mut made)).collect();
    while !stop.load(Ordering::Relaxed) {
        for c in conns.iter_mut() {
            let alive = c.as_ref().is_some_and(|s| (&*s).write_all(b"a").is_ok());
            if !alive {
                *c = connect(&mut made);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    made
}

/// One complete request; the status code of the answer, if one came within 2 s.
fn request(addr: &str, req: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(req).ok()?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).ok()?;
        if n == 0 {
            break;
        }
        got += n;
    }
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// `bevrt run` on the 20 fps simulated camera for `secs` with both endpoints; with `attack`,
/// 200 slow connections against each while a scraper and a viewer keep trying. Returns
/// (frames processed, scrapes ok, scrapes tried, viewer handshakes ok, tried).
fn paced_run(tag: &str, secs: u64, attack: bool) -> (u64, u64, u64, u64, u64) {
    let w = scratch(tag);
    let (http_addr, ws_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let b = workspace_root().join("models/bundles/letsmap-lite");
    let child = std::process::Command::new(bin("bevrt"))
        .args(["run", "--bundle"])
        .arg(&b)
        .args(["--source", "sim:?seed=4&fps=20", "--duration"])
        .arg(secs.to_string())
        .args([
            "--prometheus",
            &http_addr,
            "--foxglove",
            &ws_addr,
            "--sinks",
            "jsonl",
        ])
        .arg("--out")
        .arg(&w)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for both endpoints.
    let t0 = Instant::now();
    while request(&http_addr, b"GET /healthz HTTP/1.1\r\n\r\n").is_none()
        || TcpStream::connect(&ws_addr).is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "endpoints never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    if attack {
        for (addr, start) in [
            (http_addr.clone(), &b"GET /metrics HTTP/1.1\r\nX-Slow: "[..]),
            (
                ws_addr.clone(),
                &b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nX-Slow: "[..],
            ),
        ] {
            let s = stop.clone();
            attackers.push(std::thread::spawn(move || slow_loris(addr, 200, start, s)));
        }
    }
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let legit = {
        let (c, s, h, v) = (
            counts.clone(),
            stop.clone(),
            http_addr.clone(),
            ws_addr.clone(),
        );
        std::thread::spawn(move || {
            let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n";
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                c[1].fetch_add(1, Ordering::Relaxed);
                if request(&h, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == Some(200) {
                    c[0].fetch_add(1, Ordering::Relaxed);
                }
                if i.is_multiple_of(4) {
                    c[3].fetch_add(1, Ordering::Relaxed);
                    if request(&v, upgrade) == Some(101) {
                        c[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    legit.join().unwrap();
    for a in attackers {
        let made = a.join().unwrap();
        eprintln!("{tag}: an attacker made {made} connections");
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let frames = report["frames_processed"].as_u64().unwrap();
    let l = |i: usize| counts[i].load(Ordering::Relaxed);
    (frames, l(0), l(1), l(2), l(3))
}

#[test]
fn two_hundred_slow_clients_per_endpoint_cost_no_frames_and_starve_no_one() {
    let secs = 12;
    let (base, ..) = paced_run("endpoints-base", secs, false);
    let (frames, scrapes, tried, views, view_tries) = paced_run("endpoints-attack", secs, true);
    eprintln!(
        "frames: {base} without, {frames} with 400 slow clients; scrapes {scrapes}/{tried}, viewer handshakes {views}/{view_tries}"
    );
    assert!(
        base >= 20 * (secs - 3),
        "the paced run itself fell behind: {base} frames"
    );
    assert!(
        frames as f64 >= 0.95 * base as f64,
        "frame rate fell by more than 5 %: {frames} vs {base}"
    );
    assert!(
        tried >= 10 && scrapes as f64 >= 0.9 * tried as f64,
        "scrapes {scrapes}/{tried}"
    );
    assert!(
        view_tries >= 3 && views as f64 >= 0.9 * view_tries as f64,
        "viewers {views}/{view_tries}"
    );
}
