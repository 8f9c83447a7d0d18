//! koshka-bench (placeholder).
