//! The one error type of the client.

use std::time::Duration;

/// Everything that can go wrong talking to a memcached-protocol server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (connect, read or write).
    #[error("I/O error talking to the server: {0}")]
    Io(#[from] std::io::Error),
    /// No complete reply (or no write progress) within the client's timeout.
    #[error("no reply within {timeout:?}")]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server closed the connection before a complete reply arrived.
    #[error("server closed the connection")]
    Closed,
    /// The key cannot be sent in the text protocol (empty, or contains whitespace or control
    /// characters). Use `send_raw` to send such keys on purpose.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// The server sent bytes that do not form a reply.
    #[error("malformed reply ({reason}): {line:?}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
        /// The offending line, lossily decoded.
        line: String,
    },
    /// The server sent a well-formed reply that does not answer the command sent.
    #[error("unexpected reply to {command}: {reply}")]
    Unexpected {
        /// The command that was sent.
        command: &'static str,
        /// The reply, lossily decoded and abbreviated.
        reply: String,
    },
    /// The server answered `ERROR` (unknown command or bad command line).
    #[error("server replied ERROR")]
    UnknownCommand,
    /// The server answered `CLIENT_ERROR <message>`.
    #[error("CLIENT_ERROR {0}")]
    ClientError(String),
    /// The server answered `SERVER_ERROR <message>`.
    #[error("SERVER_ERROR {0}")]
    ServerError(String),
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
