//! koshka-client (placeholder).
