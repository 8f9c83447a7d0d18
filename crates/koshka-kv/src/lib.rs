//! koshka-kv (placeholder).
