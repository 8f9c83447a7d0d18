//! The engines this build knows. **This is the one place an engine registers**: its crate
//! exports an [`EngineSpec`] (name, stable default port, key length limit, constructor) and
//! one line below adds it. See `docs/engine-guide.md`.

use koshka_engine::EngineSpec;

/// Every engine of this build, in the order `koshka serve` starts them by default.
#[must_use]
pub fn builtin() -> Vec<EngineSpec> {
    vec![
        koshka_kv::SPEC,
        koshka_messages::MESSAGES_SPEC,
        koshka_messages::WALL_SPEC,
        koshka_friends::SPEC,
        koshka_news::SPEC,
        koshka_lists::SPEC,
        koshka_search::SPEC,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ports_are_unique_and_stable() {
        let specs = builtin();
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.default_port, b.default_port);
            }
        }
        let ports: Vec<(&str, u16)> = specs.iter().map(|s| (s.name, s.default_port)).collect();
        assert_eq!(
            ports,
            vec![
                ("kv", 11211),
                ("messages", 11212),
                ("wall", 11213),
                ("friends", 11214),
                ("news", 11215),
                ("lists", 11216),
                ("search", 11217)
            ]
        );
    }
}
