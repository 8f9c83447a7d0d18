//! Engine-level tests.

#[test]
fn image_of_empty_engine_is_empty() {
    let engine = crate::FriendsEngine::new(koshka_engine::ShardSpec::default());
    assert!(crate::engine::image(&engine).is_empty());
}
