//! koshka-friends (placeholder).
