//! koshka media processing against the real binary and Debian's ffmpeg: photo sizes with
//! location metadata stripped (checked with exiftool) and orientation applied, bad input
//! refused before or by the sandbox, an ffmpeg hang killed at the timeout, video with a
//! location tag transcoded and stripped (checked with ffprobe), and nginx in front.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod media_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use media_support::{ffmpeg, http, Media};

fn exiftool_json(path: &Path) -> serde_json::Value {
    let out = Command::new("exiftool")
        .args(["-j", "-a", "-G1"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

fn ffprobe_json(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GPS tags (exiftool's names) or the coordinates themselves (ffprobe's `location` tag value).
fn has_location(v: &serde_json::Value) -> bool {
    let s = v.to_string().to_lowercase();
    s.contains("gps") || s.contains("55.7558") || s.contains("37.6173") || s.contains("55 deg")
}

#[test]
fn photo_sizes_strip_gps_and_apply_orientation() {
    let tmp = tempfile::tempdir().unwrap();
    let jpg = tmp.path().join("camera.jpg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1600x1200",
        "-frames:v",
        "1",
        jpg.to_str().unwrap(),
    ]);
    let out = Command::new("exiftool")
        .args([
            "-q",
            "-overwrite_original",
            "-GPSLatitude=55.7558",
            "-GPSLatitudeRef=N",
            "-GPSLongitude=37.6173",
            "-GPSLongitudeRef=E",
            "-Make=KoshkaCam",
            "-Orientation#=6",
        ])
        .arg(&jpg)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        has_location(&exiftool_json(&jpg)),
        "the input must carry GPS"
    );
    let m = Media::start(&[]);
    let r = m.req(
        "POST",
        "/photo",
        &[("Content-Type", "image/jpeg")],
        Some(&std::fs::read(&jpg).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let sizes = j["sizes"].as_array().unwrap();
    let types: Vec<&str> = sizes.iter().map(|s| s["type"].as_str().unwrap()).collect();
    // Long side 1600: w (2560) would be an upscale.
    assert_eq!(types, ["s", "m", "x", "y", "z"]);
    for s in sizes {
        let (w, h) = (s["width"].as_u64().unwrap(), s["height"].as_u64().unwrap());
        // Orientation 6 (rotate 90° clockwise): landscape 1600×1200 becomes portrait.
        assert!(h > w, "{s}");
        let long: u64 = match s["type"].as_str().unwrap() {
            "s" => 75,
            "m" => 130,
            "x" => 604,
            "y" => 807,
            _ => 1080,
        };
        assert_eq!(h, long);
        let body = m.get(s["url"].as_str().unwrap());
        assert_eq!(body.status, 200);
        assert_eq!(body.header("content-type"), Some("image/jpeg"));
        let p = tmp
            .path()
            .join(format!("{}.jpg", s["type"].as_str().unwrap()));
        std::fs::write(&p, &body.body).unwrap();
        let exif = exiftool_json(&p);
        assert!(
            !has_location(&exif),
            "location left in {}: {exif}",
            s["type"]
        );
        assert!(
            !exif.to_string().contains("KoshkaCam"),
            "metadata left: {exif}"
        );
        let probe = ffprobe_json(&p);
        assert_eq!(probe["streams"][0]["width"].as_u64(), Some(w));
        assert_eq!(probe["streams"][0]["height"].as_u64(), Some(h));
    }
    // The original is not stored: every stored byte is one of the sizes.
    let stats = m.stats();
    let total: u64 = sizes
        .iter()
        .map(|s| s["bytes"].as_u64().unwrap() + 40 + 7)
        .sum();
    assert!(stats["live_bytes"].parse::<u64>().unwrap() <= total);
    let jobs: serde_json::Value = serde_json::from_str(&m.key("jobs").unwrap()).unwrap();
    assert_eq!(jobs["done"], 1);
    assert_eq!(m.key(&format!("job{}", j["job"])).as_deref(), Some("done"));
    // A PNG labelled image/jpeg is sniffed as what it is; a tiny image gets one size.
    let png = tmp.path().join("tiny.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=40x30",
        "-frames:v",
        "1",
        png.to_str().unwrap(),
    ]);
    let r = m.req(
        "POST",
        "/photo",
        &[("Content-Type", "image/jpeg")],
        Some(&std::fs::read(&png).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["sizes"].as_array().unwrap().len(), 1);
    assert_eq!(j["sizes"][0]["width"], 40);
}

fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[0u8; 64]);
    v
}

#[test]
fn bad_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A canary the crafted inputs try to read: it must never show up in any output.
    let canary = tmp.path().join("secret.txt");
    std::fs::write(&canary, "CANARY-7f3a\n").unwrap();
    let c = canary.to_str().unwrap();
    let m = Media::start(&[]);
    let hls = format!("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nconcat:file://{c}|file://{c}\n#EXT-X-ENDLIST\n");
    let concat = format!("ffconcat version 1.0\nfile '{c}'\n");
    let mut ftyp_hls = b"\0\0\0\x18ftypisom\0\0\0\0isom".to_vec();
    ftyp_hls.extend_from_slice(hls.as_bytes());
    let jpg = tmp.path().join("ok.jpg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        jpg.to_str().unwrap(),
    ]);
    let jpeg = std::fs::read(&jpg).unwrap();
    let wide = tmp.path().join("wide.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=3000x100",
        "-frames:v",
        "1",
        wide.to_str().unwrap(),
    ]);
    let mp4 = tmp.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        mp4.to_str().unwrap(),
    ]);
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("/video", "video/mp4", hls.clone().into_bytes(), 415),
        ("/photo", "image/jpeg", hls.into_bytes(), 415),
        ("/video", "video/mp4", concat.into_bytes(), 415),
        (
            "/video",
            "video/mp4",
            format!("concat:{c}|{c}").into_bytes(),
            415,
        ),
        ("/video", "video/mp4", ftyp_hls, 422),
        ("/photo", "image/png", png_header(30_000, 30_000), 422),
        ("/photo", "image/png", png_header(7001, 7000), 422),
        ("/photo", "image/png", std::fs::read(&wide).unwrap(), 422),
        ("/photo", "image/jpeg", garbage.clone(), 415),
        ("/video", "video/mp4", garbage, 415),
        ("/photo", "image/jpeg", jpeg[..300].to_vec(), 422),
        ("/photo", "image/jpeg", std::fs::read(&mp4).unwrap(), 415),
        ("/video", "video/mp4", jpeg.clone(), 415),
        ("/photo", "image/jpeg", Vec::new(), 400),
    ];
    for (i, (path, ctype, body, want)) in cases.iter().enumerate() {
        let r = m.req("POST", path, &[("Content-Type", ctype)], Some(body));
        assert_eq!(r.status, *want, "case {i} ({path}): {}", r.text());
        assert!(!r.text().contains("CANARY"), "case {i} leaked the canary");
    }
    // Nothing refused was stored; the huge PNGs never reached ffmpeg (refused from the header).
    assert_eq!(m.stats()["files"], "0");
    let jobs: serde_json::Value = serde_json::from_str(&m.key("jobs").unwrap()).unwrap();
    // Only the playlist behind an MP4 signature reaches ffprobe (and fails in the forced mov
    // demuxer); the truncated JPEG has no frame header left and is refused before ffmpeg.
    assert_eq!(jobs["failed"], 1, "{jobs}");
    let left: Vec<_> = std::fs::read_dir(m.tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    // The server is fine afterwards.
    let r = m.req("POST", "/photo", &[], Some(&jpeg));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn ffmpeg_hang_is_killed_at_the_timeout_and_the_worker_is_free() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("ffmpeg-hangs");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jpg = tmp.path().join("ok.jpg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        jpg.to_str().unwrap(),
    ]);
    let jpeg = std::fs::read(&jpg).unwrap();
    let m = Media::start(&[
        "--ffmpeg",
        fake.to_str().unwrap(),
        "--job-timeout",
        "1",
        "--workers",
        "1",
    ]);
    for round in 1..=2u64 {
        let t = Instant::now();
        let r = m.req("POST", "/photo", &[], Some(&jpeg));
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains("timed out"), "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let jobs: serde_json::Value = serde_json::from_str(&m.key("jobs").unwrap()).unwrap();
        assert_eq!(jobs["timed_out"], round);
        assert_eq!(jobs["running"], 0);
    }
    // The killed children are gone (no `sleep 300` left under the server).
    std::thread::sleep(Duration::from_millis(200));
    let pid = m.child.id().to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let cmd = std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default();
        assert!(!cmd.contains("sleep"), "left behind: {cmd}");
    }
    // Temp files removed.
    let left: Vec<_> = std::fs::read_dir(m.tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[test]
fn video_is_transcoded_with_location_stripped() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = tmp.path().join("phone.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x480:rate=25:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-metadata",
        "location=+55.7558+037.6173/",
        "-metadata",
        "title=KoshkaTitle",
        "-shortest",
        mp4.to_str().unwrap(),
    ]);
    assert!(
        has_location(&ffprobe_json(&mp4)["format"]),
        "the input must carry a location"
    );
    let m = Media::start(&[]);
    let r = m.req(
        "POST",
        "/video",
        &[("Content-Type", "video/mp4")],
        Some(&std::fs::read(&mp4).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let sizes = j["sizes"].as_array().unwrap();
    let types: Vec<&str> = sizes.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["360p", "poster"]);
    let video = m.get(sizes[0]["url"].as_str().unwrap());
    assert_eq!(video.header("content-type"), Some("video/mp4"));
    let p = tmp.path().join("out.mp4");
    std::fs::write(&p, &video.body).unwrap();
    let probe = ffprobe_json(&p);
    assert!(!has_location(&probe), "location left: {probe}");
    assert!(
        !probe.to_string().contains("KoshkaTitle"),
        "metadata left: {probe}"
    );
    let streams = probe["streams"].as_array().unwrap();
    let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["height"], 360);
    assert_eq!(v["width"], 480);
    assert!(streams
        .iter()
        .any(|s| s["codec_type"] == "audio" && s["codec_name"] == "aac"));
    // +faststart: the moov box comes before mdat.
    let find = |tag: &[u8]| video.body.windows(4).position(|w| w == tag).unwrap();
    assert!(find(b"moov") < find(b"mdat"));
    let exif = exiftool_json(&p);
    assert!(!has_location(&exif), "exiftool finds a location: {exif}");
    let poster = m.get(sizes[1]["url"].as_str().unwrap());
    assert_eq!(poster.header("content-type"), Some("image/jpeg"));
    // Range over the stored video (players seek).
    let r = m.req(
        "GET",
        sizes[0]["url"].as_str().unwrap(),
        &[("Range", "bytes=1000-1999")],
        None,
    );
    assert_eq!(r.status, 206);
    assert!(r.body == video.body[1000..2000]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn nginx_in_front_caches_slices_and_limits_bodies() {
    let m = Media::start(&[]);
    let prefix = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf_src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/media-nginx.conf"
    ))
    .unwrap();
    let mut conf = conf_src
        .replace("server 127.0.0.1:11280;", &format!("server {};", m.http))
        .replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{port};"),
        );
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if root {
        // Workers would run as nobody and could not write the cache under a root-owned temp dir.
        conf = format!("user root;\n{conf}");
    }
    assert_ne!(conf, conf_src);
    let conf_path = prefix.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut nginx = Command::new("nginx")
        .args([
            "-c",
            conf_path.to_str().unwrap(),
            "-p",
            prefix.path().to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SIGTERM: nginx stops its workers too.
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(s)) = nginx.try_wait() {
            panic!(
                "nginx exited {s}: {}",
                std::fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _nginx = Kill(nginx);
    let front = format!("127.0.0.1:{port}");
    // Upload through nginx; a 3.5 MB file crosses several 1 MiB slices.
    let data: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let r = http(
        &front,
        "POST",
        "/upload",
        &[("Content-Type", "video/mp4")],
        Some(&data),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let u = j["url"].as_str().unwrap();
    let first = http(&front, "GET", u, &[], None);
    assert_eq!(first.status, 200);
    assert!(first.body == data);
    assert_eq!(first.header("x-cache-status"), Some("MISS"));
    let second = http(&front, "GET", u, &[], None);
    assert!(second.body == data);
    assert_eq!(second.header("x-cache-status"), Some("HIT"));
    let r = http(
        &front,
        "GET",
        u,
        &[("Range", "bytes=1048000-1049999")],
        None,
    );
    assert_eq!(r.status, 206);
    assert!(r.body == data[1_048_000..1_050_000]);
    // Small file, wrong secret, unknown path.
    let small = m.upload(b"tiny file", "text/plain");
    let r = http(&front, "GET", small["url"].as_str().unwrap(), &[], None);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"tiny file"[..]));
    let bad = small["url"].as_str().unwrap().replace("/v1/", "/v1/0");
    assert_eq!(
        http(
            &front,
            "GET",
            &bad.replacen(&small["secret"].as_str().unwrap()[..3], "zzz", 1),
            &[],
            None
        )
        .status,
        404
    );
    assert_eq!(http(&front, "GET", "/etc/passwd", &[], None).status, 404);
    // nginx refuses an oversized body itself.
    let mut s = std::net::TcpStream::connect(&front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000001\r\n\r\n",
    )
    .unwrap();
    assert_eq!(media_support::read_response(&mut s, false).status, 413);
}

#[test]
fn video_that_already_fits_is_remuxed_and_720p_sources_get_two_heights() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25:duration=2",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-metadata",
        "location=+55.7558+037.6173/",
        "-shortest",
        small.to_str().unwrap(),
    ]);
    let hd = tmp.path().join("hd.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        hd.to_str().unwrap(),
    ]);
    let m = Media::start(&[]);
    let r = m.req("POST", "/video", &[], Some(&std::fs::read(&small).unwrap()));
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let sizes = j["sizes"].as_array().unwrap();
    let types: Vec<&str> = sizes.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["240p", "poster"]);
    assert_eq!(sizes[0]["remuxed"], true);
    let p = tmp.path().join("remuxed.mp4");
    std::fs::write(&p, m.get(sizes[0]["url"].as_str().unwrap()).body).unwrap();
    let probe = ffprobe_json(&p);
    assert!(!has_location(&probe), "location left: {probe}");
    // ultrafast's profile survives: the stream was copied, not re-encoded.
    let v = &probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap()
        .clone();
    assert_eq!(v["profile"], "Constrained Baseline", "{v}");

    let r = m.req("POST", "/video", &[], Some(&std::fs::read(&hd).unwrap()));
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let sizes = j["sizes"].as_array().unwrap();
    let types: Vec<&str> = sizes.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["360p", "720p", "poster"]);
    assert_eq!(
        (sizes[0]["width"].as_u64(), sizes[0]["remuxed"].as_bool()),
        (Some(640), None)
    );
    assert_eq!(
        (sizes[1]["width"].as_u64(), sizes[1]["remuxed"].as_bool()),
        (Some(1280), Some(true))
    );
}
