//! The HTTP side (hyper 1): uploads and secret-URL downloads.
//!
//! * `POST /upload` (or `PUT`): the raw body is stored as one file, byte for byte, with the
//!   request's `Content-Type` (from a small table; anything else is octet-stream); or, for a
//!   `multipart/form-data` body, the first part with a file name (or named `file`).
//! * `POST /photo`: an image is turned into VK's sizes (see [`crate::process`]); the original
//!   is not kept (it carries the camera's metadata).
//! * `POST /video`: a video is checked and transcoded; the original is not kept.
//! * `GET`/`HEAD /v<vol>/<lid hex>/<secret b64url>.<ext>`: the file, with `ETag`,
//!   `Cache-Control: public, max-age=31536000, immutable`, a single `Range` (206/416),
//!   `If-None-Match` (304). A wrong secret is the same 404 as a missing file (the secret is
//!   compared in constant time); a deleted file is 404; a hidden file is a 1×1 PNG.
//!
//! Every upload needs `Content-Length` (411 otherwise), at most
//! [`UPLOAD_BYTES_MAX`](crate::limits::UPLOAD_BYTES_MAX) (413, before any of the body is read,
//! and the connection is closed); bodies held in RAM together stay under
//! [`UPLOAD_BYTES_IN_FLIGHT_MAX`](crate::limits::UPLOAD_BYTES_IN_FLIGHT_MAX).

use std::convert::Infallible;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits::{UPLOAD_BYTES_IN_FLIGHT_MAX, UPLOAD_BYTES_MAX, UPLOAD_WAIT};
use crate::needle::ContentType;
use crate::process::{ProcessError, Processor};
use crate::store::{PutError, Store};
use crate::volume::VolumeError;

/// A transparent 1×1 PNG, served for hidden files.
pub const PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0B, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x60, 0x00, 0x02, 0x00,
    0x00, 0x05, 0x00, 0x01, 0x7A, 0x5E, 0xAB, 0x3F, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44,
    0xAE, 0x42, 0x60, 0x82,
];

const UPLOAD_UNIT: u64 = 1024;

/// Reads (and appends without fsync) up to this many bytes run on the connection's task;
/// bigger ones on a blocking thread.
const INLINE_READ_MAX: u64 = 256 << 10;

/// Shared state of the HTTP and keys sides.
pub struct App {
    /// The volumes.
    pub store: Arc<Store>,
    /// The job queue.
    pub processor: Arc<Processor>,
    upload_budget: Semaphore,
}

impl App {
    /// State over `store` and `processor`.
    #[must_use]
    pub fn new(store: Arc<Store>, processor: Arc<Processor>) -> Arc<App> {
        Arc::new(App {
            store,
            processor,
            upload_budget: Semaphore::new(
                usize::try_from(UPLOAD_BYTES_IN_FLIGHT_MAX / UPLOAD_UNIT).unwrap_or(usize::MAX),
            ),
        })
    }
}

/// The URL path of a stored file.
#[must_use]
pub fn file_path(vol: u32, lid: u32, secret: u64, ctype: ContentType) -> String {
    format!(
        "/v{vol}/{lid:x}/{}.{}",
        URL_SAFE_NO_PAD.encode(secret.to_le_bytes()),
        ctype.ext()
    )
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(%e, "http accept");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%e, "http connection");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
    let mut body = msg.into();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn not_found() -> Resp {
    text(StatusCode::NOT_FOUND, "not found")
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, p) if p.starts_with("/v") => download(app, &req, p).await,
        (Method::POST | Method::PUT, "/upload") => upload(app, req, Kind::Raw).await,
        (Method::POST | Method::PUT, "/photo") => upload(app, req, Kind::Photo).await,
        (Method::POST | Method::PUT, "/video") => upload(app, req, Kind::Video).await,
        (_, "/upload" | "/photo" | "/video") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => not_found(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Photo,
    Video,
}

fn closing(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn upload(app: &Arc<App>, req: Request<Incoming>, kind: Kind) -> Resp {
    let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return closing(text(StatusCode::LENGTH_REQUIRED, "Content-Length required"));
    };
    if len > UPLOAD_BYTES_MAX {
        return closing(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {len} bytes is over the limit of {UPLOAD_BYTES_MAX}"),
        ));
    }
    if len == 0 {
        return closing(text(StatusCode::BAD_REQUEST, "empty body"));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let units = u32::try_from(len.div_ceil(UPLOAD_UNIT)).unwrap_or(u32::MAX);
    let Ok(Ok(_permit)) =
        tokio::time::timeout(UPLOAD_WAIT, app.upload_budget.acquire_many(units)).await
    else {
        return closing(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many uploads in flight; retry",
        ));
    };
    let body = match Limited::new(req.into_body(), usize::try_from(len).unwrap_or(0))
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return closing(text(StatusCode::BAD_REQUEST, format!("body: {e}"))),
    };
    if body.len() as u64 != len {
        return closing(text(
            StatusCode::BAD_REQUEST,
            "body shorter than Content-Length",
        ));
    }
    let (body, ctype) = if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        match first_file_part(&content_type, body).await {
            Ok(part) => part,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("multipart: {e}")),
        }
    } else {
        (body, ContentType::from_mime(&content_type))
    };
    if body.is_empty() {
        return text(StatusCode::BAD_REQUEST, "empty file");
    }
    let (outputs, job) = match kind {
        Kind::Raw => (
            vec![(String::new(), 0, 0, body.clone(), ctype, false)],
            None,
        ),
        Kind::Photo | Kind::Video => {
            let r = if kind == Kind::Photo {
                app.processor.photo(&body).await
            } else {
                app.processor.video(&body).await
            };
            match r {
                Ok((job, outs)) => (
                    outs.into_iter()
                        .map(|o| {
                            (
                                o.kind,
                                o.width,
                                o.height,
                                Bytes::from(o.data),
                                o.ctype,
                                o.remuxed,
                            )
                        })
                        .collect(),
                    Some(job),
                ),
                Err(e) => {
                    let status = match e {
                        ProcessError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        ProcessError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                        ProcessError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                        ProcessError::Refused(_)
                        | ProcessError::Timeout(_)
                        | ProcessError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    };
                    return text(status, e.to_string());
                }
            }
        }
    };
    drop(body);
    let secret: u64 = rand::random();
    let store = app.store.clone();
    // Bytes clones share the buffers: the body is held once.
    let files: Vec<(Bytes, ContentType)> = outputs.iter().map(|o| (o.3.clone(), o.4)).collect();
    let total: u64 = files.iter().map(|(d, _)| d.len() as u64).sum();
    let quick = if total <= INLINE_READ_MAX {
        // A small append without fsync is a pwrite into the page cache: done here, unless the
        // volume is busy (then it waits on a blocking thread, never on this one).
        let refs: Vec<(&[u8], ContentType)> = files.iter().map(|(d, c)| (&d[..], *c)).collect();
        store.try_put(&refs, secret)
    } else {
        None
    };
    let put = if let Some(r) = quick {
        Ok(r)
    } else {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<(&[u8], ContentType)> = files.iter().map(|(d, c)| (&d[..], *c)).collect();
            store.put(&refs, secret)
        })
        .await
    };
    let (vol, lids) = match put {
        Ok(Ok(r)) => r,
        Ok(Err(e @ PutError::Full(_))) => {
            return text(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        Ok(Err(e)) => return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let sizes: Vec<serde_json::Value> = outputs
        .iter()
        .zip(&lids)
        .filter(|(o, _)| !o.0.is_empty())
        .map(|(o, lid)| {
            let mut j = serde_json::json!({
                "type": o.0, "lid": format!("{lid:x}"), "width": o.1, "height": o.2,
                "bytes": o.3.len(), "url": file_path(vol, *lid, secret, o.4),
            });
            if o.5 {
                j["remuxed"] = true.into();
            }
            j
        })
        .collect();
    let main = *lids.last().unwrap_or(&0);
    let main_type = outputs.last().map_or(ContentType::Octet, |o| o.4);
    let mut reply = serde_json::json!({
        "vol": vol,
        "lid": format!("{main:x}"),
        "secret": URL_SAFE_NO_PAD.encode(secret.to_le_bytes()),
        "url": file_path(vol, main, secret, main_type),
        "sizes": sizes,
    });
    if let Some(job) = job {
        reply["job"] = job.into();
    }
    let mut r = Response::new(Full::new(Bytes::from(reply.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The first part of a `multipart/form-data` body that carries a file name (or is named
/// `file`): its bytes and content type. The whole body is already in RAM (and within the
/// upload limit), so multer parses one chunk.
async fn first_file_part(content_type: &str, body: Bytes) -> Result<(Bytes, ContentType), String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures_util::stream::once(std::future::ready(Ok::<Bytes, Infallible>(body)));
    let mut parts = multer::Multipart::new(stream, boundary);
    while let Some(field) = parts.next_field().await.map_err(|e| e.to_string())? {
        if field.file_name().is_some() || field.name() == Some("file") {
            let ctype = field
                .content_type()
                .map_or(ContentType::Octet, |m| ContentType::from_mime(m.as_ref()));
            let data = field.bytes().await.map_err(|e| e.to_string())?;
            return Ok((data, ctype));
        }
    }
    Err("no file part".into())
}

/// `/v<vol>/<lid hex>/<secret>.<ext>` → (vol, lid, secret bytes).
fn parse_path(p: &str) -> Option<(u32, u32, [u8; 8])> {
    let mut parts = p.strip_prefix("/v")?.split('/');
    let vol = parts.next()?.parse::<u32>().ok()?;
    let lid = u32::from_str_radix(parts.next()?, 16).ok()?;
    let name = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let (secret, _ext) = name.split_once('.')?;
    let bytes = URL_SAFE_NO_PAD.decode(secret).ok()?;
    Some((vol, lid, bytes.try_into().ok()?))
}

/// A single `bytes=` range against `size`: `None` = whole file, `Some(Err)` = unsatisfiable.
fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // Several ranges: serve the whole file (RFC 9110 allows it).
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size)));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    if start >= size || start >= end {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

async fn download(app: &Arc<App>, req: &Request<Incoming>, p: &str) -> Resp {
    let Some((vol, lid, secret)) = parse_path(p) else {
        return not_found();
    };
    let Some(v) = app.store.volume(vol) else {
        return not_found();
    };
    let Some(entry) = v.entry(lid) else {
        return not_found();
    };
    if !bool::from(entry.secret().to_le_bytes().ct_eq(&secret)) || entry.deleted() {
        return not_found();
    }
    if entry.hidden() {
        let mut r = Response::new(Full::new(Bytes::from_static(PIXEL_PNG)));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return r;
    }
    let etag = format!("\"{vol:x}-{lid:x}-{:x}\"", entry.secret() & 0xFFFF_FFFF);
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert(
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("")),
        );
        return r;
    }
    let size = u64::from(entry.size());
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| parse_range(h, size));
    let range = match range {
        Some(Err(())) => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let head = req.method() == Method::HEAD;
    let len = range.map_or(size, |(a, b)| b - a);
    let read = if head {
        Ok(None)
    } else if len <= INLINE_READ_MAX {
        // Small reads are one pread from the page cache in the common case: doing it here
        // saves the hand-off to a blocking thread (nginx blocks on disk reads the same way).
        v.read(lid, range).map(Some)
    } else {
        let v = v.clone();
        match tokio::task::spawn_blocking(move || v.read(lid, range)).await {
            Ok(r) => r.map(Some),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    };
    let data = match read {
        Ok(d) => d,
        Err(VolumeError::Missing) => return not_found(),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut r = Response::new(Full::new(data.map(|d| d.data).unwrap_or_default()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(entry.ctype().mime()),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Some((a, b)) = range {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{}/{size}", b - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 100))));
        assert_eq!(parse_range("bytes=50-1000", 100), Some(Ok((50, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn paths() {
        let p = file_path(3, 0x1f, 0x0102_0304_0506_0708, ContentType::Jpeg);
        let (vol, lid, secret) = parse_path(&p).unwrap_or_default();
        assert_eq!(
            (vol, lid, u64::from_le_bytes(secret)),
            (3, 0x1f, 0x0102_0304_0506_0708)
        );
        assert!(parse_path("/v3/zz/abc.jpg").is_none());
        assert!(parse_path("/v3/1/AAAAAAAAAAA.jpg/x").is_none());
    }

    #[test]
    fn pixel_is_a_png() {
        assert_eq!(
            crate::sniff::sniff(PIXEL_PNG),
            Some(crate::sniff::Format::Png)
        );
        assert_eq!(
            crate::sniff::image_size(crate::sniff::Format::Png, PIXEL_PNG),
            Some((1, 1))
        );
    }
}
