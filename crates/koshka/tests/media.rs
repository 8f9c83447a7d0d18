//! koshka media against the real binary: round trip, Range/ETag/secrets, hide/delete, the key
//! port, crash during an upload storm, a damaged copy, full volumes, upload limits, compaction
//! under load. Processing (ffmpeg) and nginx are in `media_processing.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod media_support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media_support::{http, make_media, round_trip_file, Media};

/// Files in the CI round trip; `KOSHKA_MEDIA_ROUND_TRIP_FILES=10000` for the full run.
const ROUND_TRIP_FILES_CI: u64 = 300;
/// Largest round-trip file.
const ROUND_TRIP_SIZE_MAX: usize = 5 << 20;

fn url(j: &serde_json::Value) -> String {
    j["url"].as_str().unwrap().to_owned()
}

fn wrong_secret(u: &str) -> String {
    // Flip one character of the secret.
    let dot = u.rfind('.').unwrap();
    let slash = u.rfind('/').unwrap();
    let mut s: Vec<char> = u.chars().collect();
    let i = slash + 1 + (dot - slash - 1) / 2;
    s[i] = if s[i] == 'A' { 'B' } else { 'A' };
    s.into_iter().collect()
}

#[test]
fn round_trip_ranges_secrets_hide_delete_restart() {
    let files: u64 = std::env::var("KOSHKA_MEDIA_ROUND_TRIP_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUND_TRIP_FILES_CI);
    let tmp = tempfile::tempdir().unwrap();
    let bases = Arc::new(make_media(tmp.path()));
    let m = Media::start(&[]);
    let urls: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (bases, urls, next, m) = (bases.clone(), urls.clone(), next.clone(), &m);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                if i >= files {
                    break;
                }
                let (data, ctype) = round_trip_file(&bases, i, ROUND_TRIP_SIZE_MAX);
                let j = m.upload(&data, ctype);
                assert!(j["secret"].as_str().unwrap().len() == 11);
                urls.lock().unwrap().push((i, url(&j)));
            });
        }
    });
    let urls = urls.lock().unwrap().clone();
    let check_all = |m: &Media| {
        for (i, u) in &urls {
            let (data, ctype) = round_trip_file(&bases, *i, ROUND_TRIP_SIZE_MAX);
            let r = m.get(u);
            assert_eq!(r.status, 200, "{u}");
            assert!(r.body == data, "file {i} differs");
            assert_eq!(r.header("content-type"), Some(ctype));
        }
    };
    check_all(&m);

    // Range slices, ETag, immutable caching, If-None-Match.
    let (i0, u0) = urls
        .iter()
        .max_by_key(|(i, _)| round_trip_file(&bases, *i, ROUND_TRIP_SIZE_MAX).0.len())
        .unwrap()
        .clone();
    let (data0, _) = round_trip_file(&bases, i0, ROUND_TRIP_SIZE_MAX);
    let n = data0.len();
    for (range, want) in [
        ("bytes=0-99".to_owned(), &data0[..100]),
        (format!("bytes={}-", n - 10), &data0[n - 10..]),
        ("bytes=-7".to_owned(), &data0[n - 7..]),
        (format!("bytes=100-{}", n + 1000), &data0[100..]),
    ] {
        let r = m.req("GET", &u0, &[("Range", &range)], None);
        assert_eq!(r.status, 206, "{range}");
        assert!(r.body == want, "{range}");
        assert!(r
            .header("content-range")
            .unwrap()
            .ends_with(&format!("/{n}")));
    }
    let r = m.req("GET", &u0, &[("Range", &format!("bytes={n}-"))], None);
    assert_eq!(r.status, 416);
    let r = m.get(&u0);
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = r.header("etag").unwrap().to_owned();
    let r = m.req("GET", &u0, &[("If-None-Match", &etag)], None);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = m.req("HEAD", &u0, &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
    // Range with curl too.
    let out = std::process::Command::new("curl")
        .args(["-s", "-r", "5-24", &format!("http://{}{u0}", m.http)])
        .output()
        .unwrap();
    assert_eq!(out.stdout, &data0[5..25]);

    // Wrong secret, unknown lid, unknown volume, junk paths: all the same 404.
    let u1 = &urls[1].1.clone();
    for bad in [
        wrong_secret(u1),
        "/v1/ffffff/AAAAAAAAAAA.jpg".to_owned(),
        "/v99/1/AAAAAAAAAAA.jpg".to_owned(),
        "/v1/1/short.jpg".to_owned(),
        "/nothing".to_owned(),
    ] {
        let r = m.get(&bad);
        assert_eq!(r.status, 404, "{bad}");
        assert_eq!(r.text(), "not found\n");
    }

    // Hidden → 1×1 PNG; unhide → the file again; delete → 404.
    let parts: Vec<&str> = u1.split('/').collect();
    let (vol, lid) = (parts[1].trim_start_matches('v'), parts[2]);
    assert_eq!(m.key(&format!("hide{vol},{lid}")).as_deref(), Some("1"));
    let r = m.get(u1);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(&r.body[..8], b"\x89PNG\r\n\x1a\n");
    assert!(r.body.len() < 100);
    assert_eq!(m.key(&format!("unhide{vol},{lid}")).as_deref(), Some("1"));
    assert!(m.get(u1).body.len() >= 1024);
    let u2 = &urls[2].1.clone();
    let p2: Vec<&str> = u2.split('/').collect();
    assert_eq!(
        m.key(&format!("delete{},{}", &p2[1][1..], p2[2]))
            .as_deref(),
        Some("1")
    );
    assert_eq!(m.get(u2).status, 404);
    let hide_again = (vol.to_owned(), lid.to_owned());

    // After a clean restart: the same bytes, the same flags.
    let dirs = m.terminate();
    let m = Media::restart(dirs, &[]);
    assert_eq!(m.get(u2).status, 404);
    assert_eq!(
        m.key(&format!("hide{},{}", hide_again.0, hide_again.1))
            .as_deref(),
        Some("1")
    );
    assert!(m.get(u1).body.len() < 100);
    let urls: Vec<(u64, String)> = urls
        .into_iter()
        .filter(|(_, u)| u != u1 && u != u2)
        .collect();
    for (i, u) in &urls {
        let (data, _) = round_trip_file(&bases, *i, ROUND_TRIP_SIZE_MAX);
        assert!(m.get(u).body == data, "file {i} differs after restart");
    }
}

/// Uploads random files from `threads` threads until `stop`; returns what was acknowledged.
fn storm(m: &Media, threads: usize, stop: &AtomicBool, max: usize) -> Vec<(u64, String)> {
    let acked = Mutex::new(Vec::new());
    let seq = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = seq.fetch_add(1, Ordering::Relaxed) as u64;
                    let data = storm_file(i, max);
                    let addr = m.http.clone();
                    // The server may die mid-request: only a complete 200 counts.
                    let r = std::panic::catch_unwind(|| {
                        http(
                            &addr,
                            "POST",
                            "/upload",
                            &[("Content-Type", "application/octet-stream")],
                            Some(&data),
                        )
                    });
                    match r {
                        Ok(r) if r.status == 200 => {
                            let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                            acked.lock().unwrap().push((i, url(&j)));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

fn storm_file(i: u64, max: usize) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(i ^ 0x5eed);
    let n = rng.gen_range(1..max);
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

fn kill_during_storm(durability: &str) {
    let m = Media::start(&["--durability", durability]);
    let stop = AtomicBool::new(false);
    let pid = m.child.id();
    let acked = std::thread::scope(|s| {
        let h = s.spawn(|| storm(&m, 8, &stop, 64 << 10));
        std::thread::sleep(Duration::from_millis(1500));
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(
        acked.len() > 20,
        "only {} uploads acknowledged",
        acked.len()
    );
    let dirs = m.kill9();
    // A torn tail on top of whatever the kill left: half a needle in one copy, garbage in the
    // other.
    let vol1: Vec<_> = dirs
        .iter()
        .map(|d| d.path().join("vol_000001.dat"))
        .collect();
    let half = {
        let f = std::fs::read(&vol1[0]).unwrap();
        f[40..40 + 60].to_vec() // the first needle's header and some data
    };
    let mut a = OpenOptions::new().append(true).open(&vol1[0]).unwrap();
    std::io::Write::write_all(&mut a, &half).unwrap();
    let mut b = OpenOptions::new().append(true).open(&vol1[1]).unwrap();
    std::io::Write::write_all(&mut b, &[0xAB; 77]).unwrap();
    let m = Media::restart(dirs, &["--durability", durability]);
    assert!(
        m.wait_stderr("cutting torn tail"),
        "no torn-tail warning:\n{}",
        m.stderr.lock().unwrap()
    );
    for (i, u) in &acked {
        let r = m.get(u);
        assert_eq!(r.status, 200, "acknowledged upload {i} lost: {u}");
        assert!(
            r.body == storm_file(*i, 64 << 10),
            "acknowledged upload {i} differs"
        );
    }
    // Both copies agree again and the store takes new uploads.
    let len0 = std::fs::metadata(&vol1[0]).unwrap().len();
    assert_eq!(len0, std::fs::metadata(&vol1[1]).unwrap().len());
    let j = m.upload(b"after the crash", "text/plain");
    assert_eq!(m.get(&url(&j)).body, b"after the crash");
}

#[test]
fn kill9_during_upload_storm_everysec_keeps_every_acknowledged_upload() {
    kill_during_storm("everysec");
}

#[test]
fn kill9_during_upload_storm_always_keeps_every_acknowledged_upload() {
    kill_during_storm("always");
}

#[test]
fn damaged_copy_is_served_from_the_other_and_repaired_both_damaged_is_a_clear_error() {
    let m = Media::start(&[]);
    let mut uploaded = Vec::new();
    for i in 0..20u8 {
        let data = vec![i; 5000 + usize::from(i)];
        uploaded.push((
            data.clone(),
            url(&m.upload(&data, "application/octet-stream")),
        ));
    }
    let dirs = m.terminate();
    let p0 = dirs[0].path().join("vol_000001.dat");
    let p1 = dirs[1].path().join("vol_000001.dat");
    assert_eq!(std::fs::read(&p0).unwrap(), std::fs::read(&p1).unwrap());
    // Needle 3 (lid 3): header 40 B of the volume, then records of 40 + padded data.
    let rec = |i: usize| 40 + 8 * (5000 + i).div_ceil(8) as u64;
    let off3: u64 = 40 + (0..2).map(rec).sum::<u64>();
    let off5: u64 = off3 + rec(2) + rec(3);
    // Volume 1 reads from directory 2 first (odd volume): damage it there.
    OpenOptions::new()
        .write(true)
        .open(&p1)
        .unwrap()
        .write_all_at(b"\xFF\xFF", off3 + 40 + 100)
        .unwrap();
    // And lid 5 in both copies.
    for p in [&p0, &p1] {
        OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .write_all_at(b"\x01\x02\x03", off5 + 40 + 7)
            .unwrap();
    }
    let m = Media::restart(dirs, &[]);
    let r = m.get(&uploaded[2].1);
    assert_eq!(r.status, 200);
    assert!(r.body == uploaded[2].0);
    assert!(m.wait_stderr("repaired"));
    let r = m.get(&uploaded[4].1);
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains(&format!("volume 1 offset {off5}")),
        "{}",
        r.text()
    );
    for (i, (data, u)) in uploaded.iter().enumerate() {
        if i != 4 {
            assert!(m.get(u).body == *data, "file {i}");
        }
    }
    let a = std::fs::read(&p0).unwrap();
    let b = std::fs::read(&p1).unwrap();
    assert_eq!(
        a[off3 as usize..off5 as usize],
        b[off3 as usize..off5 as usize],
        "not repaired"
    );
}

#[test]
fn key_port() {
    let m = Media::start(&[]);
    let j = m.upload(&vec![7u8; 10_000], "image/jpeg");
    let (vol, lid, secret) = (
        j["vol"].as_u64().unwrap(),
        j["lid"].as_str().unwrap().to_owned(),
        j["secret"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        m.key(&format!("valid{vol},{lid},{secret}")).as_deref(),
        Some("1")
    );
    assert_eq!(
        m.key(&format!("valid{vol},{lid},AAAAAAAAAAA")).as_deref(),
        Some("0")
    );
    assert_eq!(
        m.key(&format!("valid{vol},ff,{secret}")).as_deref(),
        Some("0")
    );
    assert_eq!(
        m.key(&format!("check_file{vol},1000")).as_deref(),
        Some("1")
    );
    assert_eq!(
        m.key(&format!("check_file{vol},99999999999")).as_deref(),
        Some("0")
    );
    assert_eq!(m.key("check_file77,1").as_deref(), Some("0"));
    let vols: serde_json::Value = serde_json::from_str(&m.key("volumes").unwrap()).unwrap();
    assert_eq!(vols.as_array().unwrap().len(), 1);
    let v: serde_json::Value =
        serde_json::from_str(&m.key(&format!("volume{vol}")).unwrap()).unwrap();
    assert_eq!(v["live_files"], 1);
    assert_eq!(v["dead_bytes"], 0);
    assert_eq!(v["copies"], 2);
    let live_before = v["live_bytes"].as_u64().unwrap();
    // Hide, unhide, delete; unknown files and malformed keys are misses or 0.
    assert_eq!(m.key(&format!("hide{vol},{lid}")).as_deref(), Some("1"));
    assert_eq!(m.key(&format!("unhide{vol},{lid}")).as_deref(), Some("1"));
    assert_eq!(m.key(&format!("hide{vol},abc")).as_deref(), Some("0"));
    assert_eq!(m.key("hide1"), None);
    assert_eq!(m.key("volumex"), None);
    assert_eq!(m.key("nonsense"), None);
    assert_eq!(
        m.key_command(&format!("delete file{vol},{lid}\r\n")),
        "DELETED\r\n"
    );
    assert_eq!(
        m.key_command(&format!("delete file{vol},{lid}\r\n")),
        "NOT_FOUND\r\n"
    );
    assert_eq!(
        m.key(&format!("valid{vol},{lid},{secret}")).as_deref(),
        Some("0")
    );
    let stats = m.stats();
    assert_eq!(stats["vol1_live_bytes"], "0");
    let dead: u64 = stats["vol1_dead_bytes"].parse().unwrap();
    assert!(dead >= live_before, "{dead} < {live_before}");
    assert_eq!(stats["volumes"], "1");
    assert!(m
        .key_command("set a 0 0 1\r\nx\r\n")
        .starts_with("CLIENT_ERROR"));
    assert_eq!(m.key_command("bogus\r\n"), "ERROR\r\n");
    // The connection survives bad requests: several commands on one stream.
    let r = m.key_command("get nonsense\r\nversion\r\n");
    assert!(r.starts_with("END\r\nVERSION"), "{r}");
}

#[test]
fn index_costs_at_most_32_bytes_per_file() {
    let m = Media::start(&["--durability", "none"]);
    for i in 0..2000u32 {
        m.upload(&i.to_le_bytes(), "application/octet-stream");
    }
    let per_file: f64 = m.stats()["index_bytes_per_file"].parse().unwrap();
    assert!(per_file <= 32.0, "{per_file} B per file");
    let dirs = m.terminate();
    let m = Media::restart(dirs, &[]);
    let per_file: f64 = m.stats()["index_bytes_per_file"].parse().unwrap();
    assert_eq!(per_file, 16.0);
}

#[test]
fn full_volume_becomes_read_only_and_the_next_one_takes_uploads() {
    let m = Media::start(&["--volume-size", "1000000"]);
    let mut up = Vec::new();
    for i in 0..30u8 {
        let data = vec![i; 100_000];
        up.push((data.clone(), m.upload(&data, "application/octet-stream")));
    }
    let vols: serde_json::Value = serde_json::from_str(&m.key("volumes").unwrap()).unwrap();
    let vols = vols.as_array().unwrap();
    assert!(vols.len() >= 3, "{vols:?}");
    assert_eq!(vols[0]["read_only"], true);
    assert_eq!(vols.last().unwrap()["read_only"], false);
    for v in vols {
        assert!(v["size"].as_u64().unwrap() <= 1_000_000);
    }
    assert_eq!(m.key("check_file1,10").as_deref(), Some("0"));
    for (data, j) in &up {
        assert!(m.get(&url(j)).body == *data);
    }
    // Bigger than a volume: refused cleanly, not an endless roll.
    let r = m.req("POST", "/upload", &[], Some(&vec![0u8; 2_000_000]));
    assert_eq!(r.status, 503, "{}", r.text());
    let dirs = m.terminate();
    let m = Media::restart(dirs, &["--volume-size", "1000000"]);
    for (data, j) in &up {
        assert!(m.get(&url(j)).body == *data);
    }
    let j = m.upload(b"more", "text/plain");
    assert_eq!(j["vol"].as_u64().unwrap() as usize, vols.len());
}

/// Sends only the head of an upload and returns the response (without sending the body).
fn head_only_upload(addr: &str, len: u64) -> media_support::Resp {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    media_support::read_response(&mut s, false)
}

#[test]
fn upload_limits_are_checked_before_the_body_is_read() {
    let m = Media::start(&[]);
    // 50 MB + 1 announced, 1000 bytes sent: refused at once.
    let t = Instant::now();
    let r = head_only_upload(&m.http, 50_000_001);
    assert_eq!(r.status, 413);
    assert!(t.elapsed() < Duration::from_secs(5));
    // No Content-Length (chunked): 411.
    let mut s = std::net::TcpStream::connect(&m.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(media_support::read_response(&mut s, false).status, 411);
    // Empty body: 400. Wrong method: 405.
    assert_eq!(m.req("POST", "/upload", &[], Some(b"")).status, 400);
    assert_eq!(m.req("GET", "/upload", &[], None).status, 405);
    // 100 concurrent oversized bodies: every one refused early, RSS stays small.
    let rss_before = m.rss_kib();
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| assert_eq!(head_only_upload(&m.http, 60_000_000).status, 413));
        }
    });
    let rss_after = m.rss_kib();
    assert!(
        rss_after < rss_before + 50_000,
        "RSS {rss_before} → {rss_after} KiB"
    );
    // Exactly at the limit is accepted.
    let big = vec![1u8; 50_000_000];
    let r = m.req("POST", "/upload", &[], Some(&big));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn compaction_under_concurrent_reads_and_uploads() {
    let m = Media::start(&[]);
    let mut files = Vec::new();
    for i in 0..300u32 {
        let data = storm_file(u64::from(i) + 1_000_000, 40_000);
        files.push((
            data.clone(),
            url(&m.upload(&data, "application/octet-stream")),
        ));
    }
    // Delete two thirds, hide one.
    let mut live = Vec::new();
    for (i, (data, u)) in files.iter().enumerate() {
        let p: Vec<&str> = u.split('/').collect();
        if i % 3 != 0 {
            assert_eq!(
                m.key(&format!("delete{},{}", &p[1][1..], p[2])).as_deref(),
                Some("1")
            );
        } else {
            live.push((data.clone(), u.clone()));
        }
    }
    let stop = AtomicBool::new(false);
    let failures = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);
    let (before, after, new_uploads) = std::thread::scope(|s| {
        for t in 0..3 {
            let (live, stop, failures, reads, m) = (&live, &stop, &failures, &reads, &m);
            s.spawn(move || {
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    let (data, u) = &live[k % live.len()];
                    let r = m.get(u);
                    if r.status != 200 || r.body != *data {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    k += 7;
                }
            });
        }
        let uploader = s.spawn(|| {
            let mut got = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = storm_file(2_000_000 + i, 20_000);
                let r = m.req("POST", "/upload", &[], Some(&data));
                if r.status == 200 {
                    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    got.push((data, url(&j)));
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            got
        });
        std::thread::sleep(Duration::from_millis(300));
        let r = m.key("compact1").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let new_uploads = uploader.join().unwrap();
        let mut w = r
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<u64>().unwrap());
        assert!(r.starts_with("compacted"), "{r}");
        (w.next().unwrap(), w.next().unwrap(), new_uploads)
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(reads.load(Ordering::Relaxed) > 10);
    assert!(after < before);
    // Disk use back to live bytes + at most 5 % (uploads during compaction included).
    let v: serde_json::Value = serde_json::from_str(&m.key("volume1").unwrap()).unwrap();
    let on_disk = std::fs::metadata(m.dir_paths()[0].join("vol_000001.dat"))
        .unwrap()
        .len();
    let live_bytes = v["live_bytes"].as_u64().unwrap();
    assert!(
        on_disk as f64 <= live_bytes as f64 * 1.05,
        "{on_disk} on disk, {live_bytes} live"
    );
    for (data, u) in live.iter().chain(&new_uploads) {
        assert!(m.get(u).body == *data);
    }
    // Refused without enough free space is tested in the volume unit tests; a second run finds
    // nothing to reclaim but still works.
    assert!(m.key("compact1").unwrap().starts_with("compacted"));
    assert!(m.key("compact9").unwrap().starts_with("error"));
    let dirs = m.terminate();
    let m = Media::restart(dirs, &[]);
    for (data, u) in live.iter().chain(&new_uploads) {
        assert!(m.get(u).body == *data);
    }
}

#[test]
fn full_directory_stops_writes_cleanly_and_reads_go_on() {
    // The second directory is a 1 MiB tmpfs mounted in a private mount namespace of the
    // server (needs CAP_SYS_ADMIN: root on a VM; skipped with a note where it is refused).
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let small = dirs[1].path().to_str().unwrap().to_owned();
    let mount = "mount -t tmpfs -o size=1m tmpfs \"$0\" && shift && exec \"$@\"";
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", mount, &small, "x", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs in a mount namespace here (unshare -m)");
        return;
    }
    let m = Media::start_wrapped(
        dirs,
        &[],
        &["unshare", "-m", "sh", "-c", mount, &small, "x"],
    );
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..40u8 {
        let data = vec![i; 100_000];
        let r = m.req("POST", "/upload", &[], Some(&data));
        if r.status == 200 {
            assert!(
                refused.is_none(),
                "an upload succeeded after writes stopped"
            );
            let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            acked.push((data, url(&j)));
        } else {
            assert_eq!(r.status, 503, "{}", r.text());
            refused.get_or_insert(r.text());
        }
    }
    let why = refused.expect("the 1 MiB directory never filled up");
    assert!(
        why.contains("writes stopped") && why.contains(&small),
        "{why}"
    );
    assert!(
        (5..11).contains(&acked.len()),
        "{} acknowledged",
        acked.len()
    );
    assert!(m.wait_stderr("write failed"));
    assert_ne!(m.stats()["writes_stopped"], "0");
    for (data, u) in &acked {
        assert!(m.get(u).body == *data);
    }
    // Both copies were cut back to the same length (the tmpfs copy seen through the server's
    // mount namespace).
    let pid = m.child.id();
    let a = std::fs::metadata(m.dir_paths()[0].join("vol_000001.dat"))
        .unwrap()
        .len();
    let b = std::fs::metadata(format!("/proc/{pid}/root{small}/vol_000001.dat"))
        .unwrap()
        .len();
    assert_eq!(a, b);
    // Restart without the tmpfs: the missing copy is rebuilt from the other one, writes work.
    let dirs = m.terminate();
    let m = Media::restart(dirs, &[]);
    assert!(m.wait_stderr("rebuilding copy"));
    for (data, u) in &acked {
        assert!(m.get(u).body == *data);
    }
    assert_eq!(m.upload(b"again", "text/plain")["vol"], 1);
    let b = std::fs::metadata(m.dir_paths()[1].join("vol_000001.dat"))
        .unwrap()
        .len();
    let a = std::fs::metadata(m.dir_paths()[0].join("vol_000001.dat"))
        .unwrap()
        .len();
    assert_eq!(a, b);
}

/// The block device mounted at `mountpoint` in process `pid`'s mount namespace (from
/// `/proc/PID/mountinfo`: the field after the file system type).
fn mount_source(pid: u32, mountpoint: &str) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&mountpoint))
            .then(|| fields.get(dash + 2).map(|s| (*s).to_owned()))?
    })
}

/// Uploads `data` expecting the writes-stopped 503: quickly (no hang), naming `dir`.
fn assert_refused(m: &Media, data: &[u8], dir: &str) {
    let t = Instant::now();
    let r = m.req("POST", "/upload", &[], Some(data));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        t.elapsed()
    );
    let why = r.text();
    assert!(why.contains("writes stopped") && why.contains(dir), "{why}");
}

#[test]
fn read_only_directory_stops_writes_cleanly_and_reads_go_on() {
    // The second directory is an ext4 file system on a loop device, mounted only in the
    // server's private mount namespace (`unshare -m`; needs root, skipped with a note where it
    // is refused) with errors=remount-ro. We are root, so chmod stops nothing, and a mounted
    // file system with files open for writing cannot be remounted read-only (EBUSY): the
    // kernel's own path is used instead, an ext4 error (sysfs `trigger_fs_error`) that turns
    // the file system read-only under the running server, as a failing disk does.
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ro = dirs[1].path().to_str().unwrap().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("ext4.img");
    let image = image.to_str().unwrap().to_owned();
    let made = std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20));
    let mkfs = made.is_ok()
        && std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", &image])
            .status()
            .is_ok_and(|s| s.success());
    let mount = |opts: &str| format!("mount -o {opts} \"$1\" \"$0\" && shift && exec \"$@\"");
    let rw = mount("loop,errors=remount-ro");
    let probe = mkfs
        && std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &rw, &ro, &image, "true"])
            .status()
            .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("SKIPPED: cannot mount an ext4 image in a mount namespace here (unshare -m)");
        return;
    }

    // 1. Read-only while running.
    let m = Media::start_wrapped(dirs, &[], &["unshare", "-m", "sh", "-c", &rw, &ro, &image]);
    let pid = m.child.id();
    let device = mount_source(pid, &ro).expect("the ext4 mount in the server's namespace");
    let trigger = format!(
        "/sys/fs/ext4/{}/trigger_fs_error",
        device.trim_start_matches("/dev/")
    );
    if !std::path::Path::new(&trigger).exists() {
        eprintln!("SKIPPED: no {trigger} (kernel without ext4 error injection)");
        return;
    }
    let mut acked = Vec::new();
    for i in 0..10u8 {
        let data = vec![i; 20_000 + usize::from(i)];
        let u = url(&m.upload(&data, "application/octet-stream"));
        acked.push((data, u));
    }
    for (data, u) in &acked {
        assert!(m.get(u).body == *data);
    }
    let len_before = std::fs::metadata(m.dir_paths()[0].join("vol_000001.dat"))
        .unwrap()
        .len();
    std::fs::write(&trigger, "koshka test: read-only directory").unwrap();
    // Newer kernels mark it `emergency_ro`, older ones remount it `ro`.
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!(" {ro} ")))
        .unwrap();
    let super_opts = line.rsplit(' ').next().unwrap_or("");
    assert!(
        super_opts.contains("emergency_ro") || super_opts.starts_with("ro"),
        "the ext4 file system did not turn read-only: {line}"
    );
    for i in 0..5u8 {
        assert_refused(&m, &vec![100 + i; 20_000], &ro);
    }
    assert_ne!(m.stats()["writes_stopped"], "0");
    assert!(m.wait_stderr("writes stop"));
    // Reads go on (volume 1 is odd: its reads try the read-only copy first).
    for (data, u) in &acked {
        let r = m.get(u);
        assert_eq!(r.status, 200);
        assert!(r.body == *data);
    }
    // The writable copy was cut back; the read-only one never grew.
    let a = std::fs::metadata(m.dir_paths()[0].join("vol_000001.dat"))
        .unwrap()
        .len();
    let b = std::fs::metadata(format!("/proc/{pid}/root{ro}/vol_000001.dat"))
        .unwrap()
        .len();
    assert_eq!((a, b), (len_before, len_before));
    let dirs = m.terminate();

    // 2. Read-only at start (the file system checked, then mounted ro): the server starts,
    // reads go on, uploads get the same 503.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-y", &image])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(fsck.code().is_some_and(|c| c <= 1), "e2fsck: {fsck}");
    let m = Media::start_wrapped(
        dirs,
        &[],
        &["unshare", "-m", "sh", "-c", &mount("loop,ro"), &ro, &image],
    );
    assert!(m.wait_stderr("refuses writes"));
    assert_refused(&m, b"at start", &ro);
    for (data, u) in &acked {
        assert!(m.get(u).body == *data);
    }
    let dirs = m.terminate();

    // 3. Writable again: every acknowledged file, the copies agree, uploads resume.
    let m = Media::start_wrapped(dirs, &[], &["unshare", "-m", "sh", "-c", &rw, &ro, &image]);
    assert_eq!(m.stats()["writes_stopped"], "0");
    for (data, u) in &acked {
        assert!(m.get(u).body == *data);
    }
    let again = m.upload(b"again", "text/plain");
    assert!(m.get(&url(&again)).body == b"again");
    let pid = m.child.id();
    let a = std::fs::read(m.dir_paths()[0].join("vol_000001.dat")).unwrap();
    let b = std::fs::read(format!("/proc/{pid}/root{ro}/vol_000001.dat")).unwrap();
    assert!(a == b, "copies differ: {} vs {} bytes", a.len(), b.len());
    drop(m.terminate());
}

#[test]
fn multipart_uploads() {
    let m = Media::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let path = tmp.path().join("clip.bin");
    std::fs::write(&path, &data).unwrap();
    // curl's own multipart encoding, with an extra text field before the file.
    let out = std::process::Command::new("curl")
        .args(["-s", "-F", "caption=hello", "-F"])
        .arg(format!("photo=@{};type=video/mp4", path.display()))
        .arg(format!("http://{}/upload", m.http))
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let r = m.get(&url(&j));
    assert!(r.body == data);
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    // A hand-made body: a part named `file` without a file name.
    let body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nplain bytes\r\n--XyZ--\r\n";
    let r = m.req(
        "POST",
        "/upload",
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
        Some(body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(m.get(&url(&j)).body, b"plain bytes");
    // No file part, no boundary, a broken body, an empty file: 400.
    for (ct, body) in [
        ("multipart/form-data; boundary=XyZ", &b"--XyZ\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhi\r\n--XyZ--\r\n"[..]),
        ("multipart/form-data", &b"whatever"[..]),
        ("multipart/form-data; boundary=XyZ", &b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno end"[..]),
        ("multipart/form-data; boundary=XyZ", &b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n\r\n--XyZ--\r\n"[..]),
    ] {
        let r = m.req("POST", "/upload", &[("Content-Type", ct)], Some(body));
        assert_eq!(r.status, 400, "{ct}: {}", r.text());
    }
    assert_eq!(m.stats()["files"], "2");
}
