//! A small blocking client of etcd's v3 JSON gateway (`/v3/...`, etcd ≥ 3.4): what koshka's
//! failover needs and nothing more — leases (grant, keep alive, revoke), put-if-absent under a
//! lease, put, get and prefix ranges. Keys and values are bytes (base64 on the wire); 64-bit
//! numbers are JSON strings, as the gateway writes them.
//!
//! etcd is the coordinator; koshka does no consensus of its own (`docs/replication.md`).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// How long one request to etcd may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or answered with an HTTP error.
    #[error("etcd {endpoint}: {reason}")]
    Unavailable {
        /// The endpoint asked.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// etcd answered something this client does not understand.
    #[error("etcd answered {0}")]
    Protocol(String),
}

/// Result of etcd requests.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One key-value pair read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's creation (a fencing token: it changes with every new holder).
    pub create_revision: i64,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

/// A client of one etcd endpoint (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    agent: ureq::Agent,
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// The smallest key greater than every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Client {
    /// A client of `endpoint`, e.g. `http://127.0.0.1:2379`.
    #[must_use]
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
        }
    }

    /// The endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.endpoint);
        let unavailable = |reason: String| Error::Unavailable {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let response = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map_err(|e| unavailable(e.to_string()))?;
        let text = response
            .into_string()
            .map_err(|e| unavailable(e.to_string()))?;
        serde_json::from_str(&text).map_err(|_| Error::Protocol(text))
    }

    /// Grants a lease of `ttl_seconds` (at least 1); returns its id.
    ///
    /// # Errors
    /// etcd unavailable or refusing.
    pub fn grant(&self, ttl_seconds: i64) -> Result<i64> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl_seconds.max(1) }))?;
        let id = num(&v["ID"]);
        if id == 0 {
            return Err(Error::Protocol(v.to_string()));
        }
        Ok(id)
    }

    /// Renews a lease; returns its remaining TTL in seconds, 0 when it has expired.
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn keep_alive(&self, lease: i64) -> Result<i64> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(num(&v["result"]["TTL"]))
    }

    /// Revokes a lease (its keys vanish at once).
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn revoke(&self, lease: i64) -> Result<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))?;
        Ok(())
    }

    /// Puts `key` = `value` under `lease` (0: none) only if the key does not exist. Returns
    /// `Ok(None)` when it was created (the caller holds it), else the current holder's pair.
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn create(&self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<Kv>> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "CREATE", "create_revision": "0" }],
            "success": [{ "request_put": { "key": b64(key), "value": b64(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": b64(key) } }],
        });
        let v = self.call("/v3/kv/txn", &body)?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(None);
        }
        let kvs = &v["responses"][0]["response_range"]["kvs"];
        Ok(kvs.as_array().and_then(|a| a.first()).map(parse_kv))
    }

    /// Puts `key` = `value` under `lease` (0: none).
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<()> {
        self.call(
            "/v3/kv/put",
            &json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() }),
        )?;
        Ok(())
    }

    /// Reads one key.
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        Ok(v["kvs"].as_array().and_then(|a| a.first()).map(parse_kv))
    }

    /// Reads every key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<Kv>> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        Ok(v["kvs"]
            .as_array()
            .map(|a| a.iter().map(parse_kv).collect())
            .unwrap_or_default())
    }

    /// Deletes one key.
    ///
    /// # Errors
    /// etcd unavailable.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))?;
        Ok(())
    }
}

fn parse_kv(v: &Value) -> Kv {
    Kv {
        key: unb64(&v["key"]),
        value: unb64(&v["value"]),
        create_revision: num(&v["create_revision"]),
        lease: num(&v["lease"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        assert_eq!(num(&json!("42")), 42);
        assert_eq!(num(&json!(7)), 7);
        assert_eq!(num(&Value::Null), 0);
    }
}
