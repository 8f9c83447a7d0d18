//! koshka-server (placeholder).
