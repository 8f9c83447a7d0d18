//! Nodes as a library: several in one process, each on its own ephemeral ports and data
//! directory; the example engine served with one registration line; start-up refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use koshka_client::Client;
use koshka_node::config::Config;
use koshka_node::{registry, Error};

fn config(dir: &std::path::Path, engines: &[&str]) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.threads = 1;
    config.storage.data_dir = dir.to_path_buf();
    config.engines.enabled = engines.iter().map(|e| (*e).to_string()).collect();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_one_process() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let engines = ["kv", "messages", "friends"];
            koshka_node::start(config(dir.path(), &engines), &registry::builtin()).unwrap()
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let mut kv = Client::connect(node.addr("kv").unwrap()).await.unwrap();
        kv.set("who", format!("node{i}"), 0, 0).await.unwrap();
        let mut friends = Client::connect(node.addr("friends").unwrap())
            .await
            .unwrap();
        friends
            .set(format!("friend{}_7", i + 1), "0", 0, 0)
            .await
            .unwrap();
        let mut messages = Client::connect(node.addr("messages").unwrap())
            .await
            .unwrap();
        messages
            .set("sendmsg1_2#t", format!("0\nhello from {i}"), 0, 0)
            .await
            .unwrap();
    }
    // Each node kept its own data.
    for (i, node) in nodes.iter().enumerate() {
        let mut kv = Client::connect(node.addr("kv").unwrap()).await.unwrap();
        let who = kv.get("who").await.unwrap().unwrap();
        assert_eq!(who.data, format!("node{i}").into_bytes());
        let mut friends = Client::connect(node.addr("friends").unwrap())
            .await
            .unwrap();
        let list = friends
            .get(format!("friends{}", i + 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(list.data, b"1,7");
        let mut messages = Client::connect(node.addr("messages").unwrap())
            .await
            .unwrap();
        let message = messages.get("message2_1").await.unwrap().unwrap();
        let text = String::from_utf8(message.data).unwrap();
        assert!(text.contains(&format!("hello from {i}")), "{text}");
    }
    // A stopped node comes back with its data.
    let mut nodes = nodes;
    nodes.pop().unwrap().stop().unwrap();
    let node = koshka_node::start(
        config(dirs[2].path(), &["kv", "messages", "friends"]),
        &registry::builtin(),
    )
    .unwrap();
    let mut kv = Client::connect(node.addr("kv").unwrap()).await.unwrap();
    assert_eq!(kv.get("who").await.unwrap().unwrap().data, b"node2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_engine_needs_one_registration() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry::builtin();
    registry.push(koshka_counter::SPEC);
    let node = koshka_node::start(config(dir.path(), &["kv", "counter"]), &registry).unwrap();
    let mut c = Client::connect(node.addr("counter").unwrap())
        .await
        .unwrap();
    assert!(c.get("counter5").await.unwrap().is_none());
    assert_eq!(c.incr("counter5", 40).await.unwrap(), Some(40));
    assert_eq!(c.incr("counter5", 2).await.unwrap(), Some(42));
    assert_eq!(c.get("counter5").await.unwrap().unwrap().data, b"42");
    let reply = c.send_raw(b"gets counter5\r\n").await.unwrap();
    assert_eq!(
        reply,
        b"CLIENT_ERROR command not supported by the counter engine\r\n"
    );
    let reply = c.send_raw(b"get nonsense\r\n").await.unwrap();
    assert_eq!(reply, b"CLIENT_ERROR counter keys are counter<id>\r\n");
    node.stop().unwrap();
    // Its log replays on restart.
    let node = koshka_node::start(config(dir.path(), &["counter"]), &registry).unwrap();
    let mut c = Client::connect(node.addr("counter").unwrap())
        .await
        .unwrap();
    assert_eq!(c.get("counter5").await.unwrap().unwrap().data, b"42");
}

#[test]
fn start_up_refuses_operator_mistakes_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry::builtin();
    let refused = |config: Config| match koshka_node::start(config, &registry) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    };
    let e = refused(config(dir.path(), &["kv", "nosuch"]));
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("unknown engine \"nosuch\""), "{e}");
    let e = refused(config(dir.path(), &["kv", "kv"]));
    assert!(e.to_string().contains("listed twice"), "{e}");
    let mut zero = config(dir.path(), &["kv"]);
    zero.storage.memory_limit.0 = 0;
    assert!(refused(zero).to_string().contains("memory_limit"));
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = refused(config(&file, &["kv"]));
    assert!(matches!(e, Error::DataDir { .. }), "{e}");
    assert!(e.to_string().contains("not a directory"), "{e}");
    let mut bad_port = config(dir.path(), &["kv"]);
    bad_port
        .engine
        .entry("kv".into())
        .or_default()
        .insert("port".into(), 70_000.into());
    assert!(refused(bad_port).to_string().contains("engine.kv.port"));
}

#[test]
fn ports_are_stable_per_engine() {
    let registry = registry::builtin();
    let mut config = Config::default();
    config.engines.enabled = vec!["friends".into()];
    let planned = koshka_node::plan(&config, &registry).unwrap();
    assert_eq!(
        planned[0].addr.port(),
        11214,
        "disabling others moves nothing"
    );
    config.engines.enabled = vec!["kv".into(), "wall".into(), "friends".into()];
    let ports: Vec<u16> = koshka_node::plan(&config, &registry)
        .unwrap()
        .iter()
        .map(|p| p.addr.port())
        .collect();
    assert_eq!(ports, vec![11211, 11213, 11214]);
    config
        .engine
        .entry("wall".into())
        .or_default()
        .insert("port".into(), 12013.into());
    let planned = koshka_node::plan(&config, &registry).unwrap();
    assert_eq!(planned[1].addr.port(), 12013);
}

#[test]
fn a_second_node_on_a_data_directory_stops_before_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry::builtin();
    let first = koshka_node::start(config(dir.path(), &["kv"]), &registry).unwrap();
    let e = koshka_node::start(config(dir.path(), &["kv"]), &registry).unwrap_err();
    assert!(matches!(e, Error::Lock(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    first.stop().unwrap();
    // Released on stop: a restart works.
    koshka_node::start(config(dir.path(), &["kv"]), &registry)
        .unwrap()
        .stop()
        .unwrap();
}
