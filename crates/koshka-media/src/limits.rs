//! Named limits of koshka media. Each says what happens at the limit; each is tested.

/// Largest upload body (VK's photo limit): a bigger `Content-Length` is refused with 413
/// before any of the body is read; a body without `Content-Length` is refused with 411.
pub const UPLOAD_BYTES_MAX: u64 = 50 * 1000 * 1000;

/// Upload body bytes all connections together may hold in RAM; an upload waits up to
/// [`UPLOAD_WAIT`] for room, then gets 503.
pub const UPLOAD_BYTES_IN_FLIGHT_MAX: u64 = 256 << 20;

/// How long an upload waits for room under [`UPLOAD_BYTES_IN_FLIGHT_MAX`].
pub const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Width + height of an image, in pixels (VK's limit): larger images are refused with 422
/// before any decoding.
pub const IMAGE_SIDES_MAX: u32 = 14_000;

/// Most elongated image: the long side at most this many times the short side (VK's 1:20).
pub const IMAGE_ASPECT_MAX: u32 = 20;

/// Volumes one process serves; when the last is full, uploads get 507.
pub const VOLUMES_MAX: u32 = 1000;

/// Default volume size; a volume that cannot take the next upload becomes read-only and the
/// next volume is created.
pub const VOLUME_SIZE_DEFAULT: u64 = 4 << 30;

/// Processing jobs waiting for a worker; more get 503.
pub const JOB_QUEUE_MAX: usize = 64;

/// Wall-clock limit of one ffmpeg/ffprobe run; it is killed at the limit and the job fails.
pub const JOB_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(120);

/// Address space of one ffmpeg run (prlimit --as).
pub const FFMPEG_MEMORY_MAX: u64 = 2 << 30;

/// CPU seconds of one ffmpeg run (prlimit --cpu).
pub const FFMPEG_CPU_SECONDS_MAX: u64 = 300;

/// Longest video accepted (seconds, from ffprobe); longer ones get 422.
pub const VIDEO_DURATION_MAX: f64 = 600.0;

/// Longest request line / header block the keys port accepts (see koshka-proto).
pub const KEYS_CONNECTIONS_MAX: usize = 1024;
