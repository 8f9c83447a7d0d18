//! koshka-binlog (placeholder).
