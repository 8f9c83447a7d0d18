//! Processing: a bounded job queue running Debian's ffmpeg/ffprobe as sandboxed subprocesses.
//!
//! The sandbox, in order: the upload's first bytes pick the format from an allowlist
//! ([`crate::sniff`]) and the demuxer is forced with `-f` (ffmpeg never probes, so an HLS
//! playlist or a `concat:` list named `.mp4` never reaches a demuxer that opens other files);
//! images are measured from their header and refused before decoding when too big; the input
//! is written to a private temporary directory and passed as `file:<path>` with
//! `-protocol_whitelist file,pipe`; the command is spawned directly (no shell) under
//! `prlimit --as --cpu` with `-nostdin`; a wall-clock timeout kills it; the temporary
//! directory is removed when the job ends, whatever the outcome.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::limits::{
    FFMPEG_CPU_SECONDS_MAX, FFMPEG_MEMORY_MAX, IMAGE_ASPECT_MAX, IMAGE_SIDES_MAX, JOB_QUEUE_MAX,
    VIDEO_DURATION_MAX,
};
use crate::sniff::{self, Format};

/// VK's photo sizes: type letter and long side in pixels.
pub const PHOTO_SIZES: [(char, u32); 6] = [
    ('s', 75),
    ('m', 130),
    ('x', 604),
    ('y', 807),
    ('z', 1080),
    ('w', 2560),
];

/// Video heights produced (when the source is at least this tall; the first always).
pub const VIDEO_HEIGHTS: [u32; 2] = [360, 720];

/// Processing configuration.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// ffmpeg binary.
    pub ffmpeg: PathBuf,
    /// ffprobe binary.
    pub ffprobe: PathBuf,
    /// Concurrent ffmpeg runs.
    pub workers: usize,
    /// Wall-clock limit per run.
    pub timeout: Duration,
}

/// Why processing failed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Not an allowed format (415).
    #[error("unsupported media: {0}")]
    Unsupported(String),
    /// Allowed format, refused content (422).
    #[error("refused: {0}")]
    Refused(String),
    /// The queue is full (503).
    #[error("processing queue full ({0} jobs waiting)")]
    Busy(usize),
    /// ffmpeg ran past the timeout and was killed (422: the input is to blame).
    #[error("processing timed out after {0:?}; killed")]
    Timeout(Duration),
    /// ffmpeg failed on this input (422).
    #[error("ffmpeg failed: {0}")]
    Failed(String),
    /// Our side failed (500).
    #[error("internal: {0}")]
    Internal(String),
}

/// One produced image.
#[derive(Debug, Clone)]
pub struct Output {
    /// Size type (`s`, `m`, … for photos; `360`, `720`, `poster` for video).
    pub kind: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Bytes.
    pub data: Vec<u8>,
    /// JPEG or MP4.
    pub ctype: crate::needle::ContentType,
    /// Copied from the source without re-encoding (`-c copy`).
    pub remuxed: bool,
}

/// Counters of the queue, readable by the `jobs` key.
#[derive(Debug, Default, serde::Serialize)]
pub struct JobCounters {
    /// Waiting for a worker.
    pub queued: usize,
    /// Running.
    pub running: usize,
    /// Finished fine.
    pub done: u64,
    /// Failed (bad input, ffmpeg error, timeout).
    pub failed: u64,
    /// Killed at the timeout.
    pub timed_out: u64,
    /// Workers.
    pub workers: usize,
}

/// The job queue.
pub struct Processor {
    config: ProcessConfig,
    workers: Semaphore,
    waiting: AtomicUsize,
    running: AtomicUsize,
    done: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    next_id: AtomicU64,
    recent: Mutex<VecDeque<(u64, String)>>,
}

const RECENT_JOBS: usize = 1024;

impl Processor {
    /// A queue with `config.workers` workers.
    #[must_use]
    pub fn new(config: ProcessConfig) -> Processor {
        Processor {
            workers: Semaphore::new(config.workers.max(1)),
            config,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Queue counters.
    #[must_use]
    pub fn counters(&self) -> JobCounters {
        JobCounters {
            queued: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            workers: self.config.workers.max(1),
        }
    }

    /// State of a recent job (`queued`, `running`, `done`, `failed: …`).
    #[must_use]
    pub fn job_state(&self, id: u64) -> Option<String> {
        self.recent
            .lock()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.clone())
    }

    fn set_state(&self, id: u64, state: String) {
        let mut r = self.recent.lock();
        if let Some(slot) = r.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = state;
            return;
        }
        if r.len() >= RECENT_JOBS {
            r.pop_front();
        }
        r.push_back((id, state));
    }

    async fn run_job<T, F, Fut>(&self, work: F) -> Result<(u64, T), ProcessError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProcessError>>,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= JOB_QUEUE_MAX {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ProcessError::Busy(waiting));
        }
        self.set_state(id, "queued".into());
        let permit = self.workers.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|e| ProcessError::Internal(e.to_string()))?;
        self.running.fetch_add(1, Ordering::AcqRel);
        self.set_state(id, "running".into());
        let result = work().await;
        self.running.fetch_sub(1, Ordering::AcqRel);
        match &result {
            Ok(_) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                self.set_state(id, "done".into());
            }
            Err(e) => {
                if matches!(e, ProcessError::Timeout(_)) {
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.set_state(id, format!("failed: {e}"));
            }
        }
        result.map(|r| (id, r))
    }

    /// Makes VK's photo sizes from an uploaded image: orientation applied, metadata stripped,
    /// never upscaled. Returns the job id and the sizes, smallest first.
    ///
    /// # Errors
    /// See [`ProcessError`].
    pub async fn photo(&self, data: &[u8]) -> Result<(u64, Vec<Output>), ProcessError> {
        let format = sniff::sniff(data).filter(|f| f.is_image()).ok_or_else(|| {
            ProcessError::Unsupported("not a JPEG, PNG, GIF or WebP image".into())
        })?;
        let (w, h) = sniff::image_size(format, data)
            .ok_or_else(|| ProcessError::Refused("cannot read the image dimensions".into()))?;
        check_dimensions(w, h)?;
        let orientation = if format == Format::Jpeg {
            sniff::jpeg_orientation(data)
        } else {
            1
        };
        let (w, h) = if orientation >= 5 { (h, w) } else { (w, h) };
        let long = w.max(h);
        let mut targets: Vec<(char, u32)> = PHOTO_SIZES
            .iter()
            .copied()
            .filter(|&(_, t)| t <= long)
            .collect();
        if targets.is_empty() {
            targets.push(('s', long));
        }
        let dims: Vec<(char, u32, u32)> = targets
            .iter()
            .map(|&(c, t)| {
                let sw = (u64::from(w) * u64::from(t) + u64::from(long) / 2) / u64::from(long);
                let sh = (u64::from(h) * u64::from(t) + u64::from(long) / 2) / u64::from(long);
                (
                    c,
                    u32::try_from(sw.max(1)).unwrap_or(1),
                    u32::try_from(sh.max(1)).unwrap_or(1),
                )
            })
            .collect();
        let orient = match orientation {
            2 => "hflip,",
            3 => "hflip,vflip,",
            4 => "vflip,",
            5 => "transpose=0,",
            6 => "transpose=1,",
            7 => "transpose=3,",
            8 => "transpose=2,",
            _ => "",
        };
        let config = &self.config;
        self.run_job(|| async move {
            let tmp = tempdir()?;
            let input = tmp.path().join("input");
            write(&input, data).await?;
            let labels: String = (0..dims.len()).map(|i| format!("[s{i}]")).collect();
            let mut graph = format!("[0:v]{orient}split={}{labels}", dims.len());
            for (i, (_, sw, sh)) in dims.iter().enumerate() {
                graph.push_str(&format!(";[s{i}]scale={sw}:{sh}:flags=lanczos[o{i}]"));
            }
            let mut args = input_args(format, &input);
            args.extend(["-filter_complex".into(), graph]);
            for (i, (c, _, _)) in dims.iter().enumerate() {
                args.extend(
                    [
                        "-map",
                        &format!("[o{i}]"),
                        "-map_metadata",
                        "-1",
                        "-frames:v",
                        "1",
                        "-threads",
                        "1",
                        "-c:v",
                        "mjpeg",
                        "-pix_fmt",
                        "yuvj420p",
                        "-q:v",
                        "3",
                        "-f",
                        "image2",
                        "-update",
                        "1",
                    ]
                    .map(String::from),
                );
                args.push(out_arg(&tmp.path().join(format!("{c}.jpg"))));
            }
            run(config, &config.ffmpeg, &args).await?;
            let mut outs = Vec::new();
            for (c, sw, sh) in &dims {
                outs.push(Output {
                    kind: c.to_string(),
                    width: *sw,
                    height: *sh,
                    data: read(&tmp.path().join(format!("{c}.jpg"))).await?,
                    ctype: crate::needle::ContentType::Jpeg,
                    remuxed: false,
                });
            }
            Ok(outs)
        })
        .await
    }

    /// Checks a video with ffprobe and transcodes it to H.264/AAC MP4 (`+faststart`) at 360p
    /// (and 720p when the source is at least that tall) plus a JPEG poster, metadata stripped.
    ///
    /// # Errors
    /// See [`ProcessError`].
    pub async fn video(&self, data: &[u8]) -> Result<(u64, Vec<Output>), ProcessError> {
        let format = sniff::sniff(data)
            .filter(|f| !f.is_image())
            .ok_or_else(|| {
                ProcessError::Unsupported("not an MP4/MOV or Matroska/WebM video".into())
            })?;
        let config = &self.config;
        self.run_job(|| async move {
            let tmp = tempdir()?;
            let input = tmp.path().join("input");
            write(&input, data).await?;
            let mut args: Vec<String> = [
                "-v",
                "error",
                "-print_format",
                "json",
                "-show_format",
                "-show_streams",
            ]
            .map(String::from)
            .to_vec();
            args.extend(input_args(format, &input));
            let probe = run(config, &config.ffprobe, &args).await?;
            let info: serde_json::Value = serde_json::from_slice(&probe)
                .map_err(|e| ProcessError::Failed(format!("ffprobe output: {e}")))?;
            let streams = info["streams"].as_array().cloned().unwrap_or_default();
            let video = streams
                .iter()
                .find(|s| s["codec_type"] == "video")
                .ok_or_else(|| ProcessError::Refused("no video stream".into()))?;
            let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
            let w = u32::try_from(video["width"].as_u64().unwrap_or(0)).unwrap_or(0);
            let h = u32::try_from(video["height"].as_u64().unwrap_or(0)).unwrap_or(0);
            check_dimensions(w, h)?;
            let duration: f64 = info["format"]["duration"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| ProcessError::Refused("unknown duration".into()))?;
            if !(0.0..=VIDEO_DURATION_MAX).contains(&duration) {
                return Err(ProcessError::Refused(format!(
                    "duration {duration:.1} s is over {VIDEO_DURATION_MAX} s"
                )));
            }
            let heights: Vec<u32> = VIDEO_HEIGHTS
                .iter()
                .copied()
                .enumerate()
                .filter(|&(i, t)| i == 0 || t <= h)
                .map(|(_, t)| t.min(h - h % 2).max(2))
                .collect();
            let mut args = input_args(format, &input);
            let mut dims = Vec::new();
            // Codecs that already fit (H.264 yuv420p, AAC or no audio) at a target height equal
            // to the source's are remuxed (`-c copy`), not transcoded.
            let audio_fits = streams
                .iter()
                .filter(|s| s["codec_type"] == "audio")
                .all(|s| s["codec_name"] == "aac");
            let codecs_fit =
                video["codec_name"] == "h264" && video["pix_fmt"] == "yuv420p" && audio_fits;
            for &t in &heights {
                let tw = (u64::from(w) * u64::from(t) / u64::from(h.max(1))) as u32;
                let tw = ((tw + 1) & !1).max(2);
                let remux = codecs_fit && t == h && tw == w;
                dims.push((t, tw, remux));
                args.extend(["-map", "0:v:0"].map(String::from));
                if has_audio {
                    args.extend(["-map", "0:a:0"].map(String::from));
                }
                args.extend(
                    [
                        "-map_metadata",
                        "-1",
                        "-map_metadata:s",
                        "-1",
                        "-map_chapters",
                        "-1",
                    ]
                    .map(String::from),
                );
                if remux {
                    args.extend(["-c", "copy"].map(String::from));
                } else {
                    if has_audio {
                        args.extend(["-c:a", "aac", "-b:a", "128k"].map(String::from));
                    }
                    args.extend(
                        [
                            "-vf",
                            &format!("scale={tw}:{t}"),
                            "-threads",
                            "1",
                            "-c:v",
                            "libx264",
                            "-preset",
                            "veryfast",
                            "-crf",
                            "26",
                            "-pix_fmt",
                            "yuv420p",
                        ]
                        .map(String::from),
                    );
                }
                args.extend(["-movflags", "+faststart", "-f", "mp4"].map(String::from));
                args.push(out_arg(&tmp.path().join(format!("{t}.mp4"))));
            }
            let (ph, pw, _) = dims[0];
            args.extend(
                [
                    "-map",
                    "0:v:0",
                    "-map_metadata",
                    "-1",
                    "-frames:v",
                    "1",
                    "-vf",
                    &format!("scale={pw}:{ph}"),
                    "-threads",
                    "1",
                    "-c:v",
                    "mjpeg",
                    "-pix_fmt",
                    "yuvj420p",
                    "-f",
                    "image2",
                    "-update",
                    "1",
                ]
                .map(String::from),
            );
            args.push(out_arg(&tmp.path().join("poster.jpg")));
            run(config, &config.ffmpeg, &args).await?;
            let mut outs = Vec::new();
            for &(t, tw, remux) in &dims {
                outs.push(Output {
                    kind: format!("{t}p"),
                    remuxed: remux,
                    width: tw,
                    height: t,
                    data: read(&tmp.path().join(format!("{t}.mp4"))).await?,
                    ctype: crate::needle::ContentType::Mp4,
                });
            }
            outs.push(Output {
                kind: "poster".into(),
                width: pw,
                height: ph,
                data: read(&tmp.path().join("poster.jpg")).await?,
                ctype: crate::needle::ContentType::Jpeg,
                remuxed: false,
            });
            Ok(outs)
        })
        .await
    }
}

/// VK's limits: width + height ≤ [`IMAGE_SIDES_MAX`], aspect within 1:[`IMAGE_ASPECT_MAX`].
///
/// # Errors
/// [`ProcessError::Refused`] naming the limit.
pub fn check_dimensions(w: u32, h: u32) -> Result<(), ProcessError> {
    if w == 0 || h == 0 {
        return Err(ProcessError::Refused(format!("empty image {w}x{h}")));
    }
    if u64::from(w) + u64::from(h) > u64::from(IMAGE_SIDES_MAX) {
        return Err(ProcessError::Refused(format!(
            "{w}x{h}: width + height over {IMAGE_SIDES_MAX}"
        )));
    }
    if u64::from(w.max(h)) > u64::from(w.min(h)) * u64::from(IMAGE_ASPECT_MAX) {
        return Err(ProcessError::Refused(format!(
            "{w}x{h}: aspect ratio over 1:{IMAGE_ASPECT_MAX}"
        )));
    }
    Ok(())
}

fn tempdir() -> Result<tempfile::TempDir, ProcessError> {
    tempfile::Builder::new()
        .prefix("koshka-media-job")
        .tempdir()
        .map_err(|e| ProcessError::Internal(format!("temp dir: {e}")))
}

async fn write(path: &Path, data: &[u8]) -> Result<(), ProcessError> {
    tokio::fs::write(path, data)
        .await
        .map_err(|e| ProcessError::Internal(format!("write input: {e}")))
}

async fn read(path: &Path) -> Result<Vec<u8>, ProcessError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| ProcessError::Failed(format!("no output {}: {e}", path.display())))
}

fn out_arg(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// `-protocol_whitelist file,pipe -f <forced demuxer> -i file:<path>` (plus `-noautorotate`:
/// orientation is applied explicitly).
fn input_args(format: Format, input: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["-protocol_whitelist", "file,pipe", "-f", format.demuxer()]
        .map(String::from)
        .to_vec();
    if format.is_image() {
        a.insert(0, "-noautorotate".into());
    }
    a.extend(["-i".into(), out_arg(input)]);
    a
}

/// Runs `program args` under prlimit with `-nostdin` (ffmpeg) and the wall-clock timeout;
/// returns stdout. The child is killed if the timeout passes (or the job is dropped).
async fn run(
    config: &ProcessConfig,
    program: &Path,
    args: &[String],
) -> Result<Vec<u8>, ProcessError> {
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg(format!("--as={FFMPEG_MEMORY_MAX}"))
        .arg(format!("--cpu={FFMPEG_CPU_SECONDS_MAX}"))
        .arg("--core=0")
        .arg("--")
        .arg(program)
        .arg("-hide_banner");
    if program == config.ffmpeg {
        // One ffmpeg per core: the queue runs `workers` of them, each on one thread.
        cmd.args([
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-threads",
            "1",
            "-filter_threads",
            "1",
            "-filter_complex_threads",
            "1",
        ]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| ProcessError::Internal(format!("spawn {}: {e}", program.display())))?;
    match tokio::time::timeout(config.timeout, child.wait_with_output()).await {
        Err(_) => Err(ProcessError::Timeout(config.timeout)),
        Ok(Err(e)) => Err(ProcessError::Internal(e.to_string())),
        Ok(Ok(out)) if out.status.success() => Ok(out.stdout),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: String = err.lines().take(3).collect::<Vec<_>>().join(" | ");
            Err(ProcessError::Failed(format!("{}: {err}", out.status)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimension_limits() {
        assert!(check_dimensions(7000, 7000).is_ok());
        assert!(check_dimensions(7000, 7001).is_err());
        assert!(check_dimensions(30_000, 30_000).is_err());
        assert!(check_dimensions(2000, 100).is_ok());
        assert!(check_dimensions(2001, 100).is_err());
        assert!(check_dimensions(0, 10).is_err());
    }
}
