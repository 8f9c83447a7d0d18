//! koshka-proto (placeholder).
