//! koshka-messages (placeholder).
