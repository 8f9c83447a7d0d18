//! Criterion benches of the friends engine (filled in below).

fn main() {}
