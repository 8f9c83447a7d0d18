//! The client against the real memcached on a free loopback port.

use koshka_client::testkit::ServerProcess;
use koshka_client::{Client, Error, MetaCode, Response, Status};

fn start() -> (ServerProcess, String) {
    let server = match ServerProcess::memcached() {
        Ok(server) => server,
        Err(error) => panic!("cannot start memcached (is it installed?): {error}"),
    };
    let addr = server.addr();
    (server, addr)
}

async fn connect(addr: &str) -> Client {
    match Client::connect(addr).await {
        Ok(client) => client,
        Err(error) => panic!("connect {addr}: {error}"),
    }
}

#[tokio::test]
async fn storage_and_retrieval() -> Result<(), Error> {
    let (_server, addr) = start();
    let mut client = connect(&addr).await;
    assert!(client.version().await?.starts_with("1."));
    assert_eq!(client.get("missing").await?, None);
    assert_eq!(client.set("k", "v1", 7, 0).await?, Status::Stored);
    let item = client.get("k").await?.ok_or(Error::Closed)?;
    assert_eq!(
        (item.key.as_slice(), item.flags, item.data.as_slice()),
        (&b"k"[..], 7, &b"v1"[..])
    );
    assert_eq!(item.cas, None);

    assert_eq!(client.add("k", "x", 0, 0).await?, Status::NotStored);
    assert_eq!(client.add("k2", "x", 0, 0).await?, Status::Stored);
    assert_eq!(client.replace("nope", "x", 0, 0).await?, Status::NotStored);
    assert_eq!(client.replace("k2", "y", 0, 0).await?, Status::Stored);
    assert_eq!(client.append("k2", "z").await?, Status::Stored);
    assert_eq!(client.prepend("k2", "w").await?, Status::Stored);
    assert_eq!(client.append("nope", "z").await?, Status::NotStored);
    assert_eq!(
        client.get("k2").await?.map(|item| item.data),
        Some(b"wyz".to_vec())
    );

    let items = client.get_multi(&["k", "nope", "k2"]).await?;
    let keys: Vec<&[u8]> = items.iter().map(|item| item.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"k"[..], b"k2"]);
    Ok(())
}

#[tokio::test]
async fn cas_counters_touch_delete() -> Result<(), Error> {
    let (_server, addr) = start();
    let mut client = connect(&addr).await;
    client.set("c", "1", 0, 0).await?;
    let cas = client
        .gets("c")
        .await?
        .and_then(|item| item.cas)
        .ok_or(Error::Closed)?;
    assert_eq!(
        client.cas("c", "2", 0, 0, cas + 1000).await?,
        Status::Exists
    );
    assert_eq!(client.cas("c", "2", 0, 0, cas).await?, Status::Stored);
    assert_eq!(client.cas("gone", "2", 0, 0, cas).await?, Status::NotFound);
    assert_eq!(client.gets_multi(&["c"]).await?.len(), 1);

    assert_eq!(client.incr("c", 40).await?, Some(42));
    assert_eq!(client.decr("c", 50).await?, Some(0));
    assert_eq!(client.incr("nope", 1).await?, None);
    client.set("text", "abc", 0, 0).await?;
    assert!(matches!(
        client.incr("text", 1).await,
        Err(Error::ClientError(_))
    ));

    assert!(client.touch("c", 100).await?);
    assert!(!client.touch("nope", 100).await?);
    // memcached keeps the length of a decremented value ("2" -> "0 "); accept either form.
    let data = client
        .gat(100, "c")
        .await?
        .map(|item| item.data)
        .ok_or(Error::Closed)?;
    assert_eq!(data.trim_ascii_end(), b"0");
    assert!(client
        .gats(100, "c")
        .await?
        .and_then(|item| item.cas)
        .is_some());
    assert!(client.delete("c").await?);
    assert!(!client.delete("c").await?);

    let stats = client.stats(None).await?;
    assert!(stats.iter().any(|(name, _)| name == "curr_items"));
    assert!(!client.stats(Some("settings")).await?.is_empty());
    client.flush_all(None).await?;
    assert_eq!(client.get("text").await?, None);
    Ok(())
}

#[tokio::test]
async fn meta_commands() -> Result<(), Error> {
    let (_server, addr) = start();
    let mut client = connect(&addr).await;
    let stored = client.meta_set("m", "hello", &["F5", "T0"]).await?;
    assert_eq!(stored.code, MetaCode::Hd);
    let got = client.meta_get("m", &["v", "f", "c"]).await?;
    assert_eq!(got.code, MetaCode::Va);
    assert_eq!(got.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(got.flag('f'), Some("5"));
    assert!(got.flag('c').is_some());
    assert_eq!(client.meta_get("none", &["v"]).await?.code, MetaCode::En);
    assert_eq!(
        client.meta_arithmetic("n", &["N0", "J13", "v"]).await?.data,
        Some(b"13".to_vec())
    );
    assert_eq!(client.meta_delete("m", &[]).await?.code, MetaCode::Hd);
    assert_eq!(client.meta_delete("m", &[]).await?.code, MetaCode::Nf);
    assert_eq!(client.meta_noop().await?.code, MetaCode::Mn);
    Ok(())
}

#[tokio::test]
async fn raw_passthrough_and_errors() -> Result<(), Error> {
    let (_server, addr) = start();
    let mut client = connect(&addr).await;
    assert_eq!(
        client.send_raw(b"set r 1 0 2\r\nab\r\n").await?,
        b"STORED\r\n"
    );
    assert_eq!(
        client.send_raw(b"get r\r\n").await?,
        b"VALUE r 1 2\r\nab\r\nEND\r\n"
    );
    assert_eq!(client.send_raw(b"bogus\r\n").await?, b"ERROR\r\n");
    // A noreply command has no reply; the next command's reply is the next frame.
    let frames = client
        .send_raw_multi(b"set q 0 0 1 noreply\r\nx\r\nmn\r\n", 1)
        .await?;
    assert_eq!(frames, vec![b"MN\r\n".to_vec()]);
    assert!(matches!(
        client.get("bad key").await,
        Err(Error::InvalidKey { .. })
    ));
    let big = vec![b'x'; 2 * 1024 * 1024];
    assert!(matches!(
        client.set("big", &big, 0, 0).await,
        Err(Error::ServerError(_))
    ));
    // The connection is still usable after the server refused the value.
    assert_eq!(
        client.get("q").await?.map(|item| item.data),
        Some(b"x".to_vec())
    );
    Ok(())
}

#[tokio::test]
async fn pipelining_keeps_order() -> Result<(), Error> {
    let (_server, addr) = start();
    let mut client = connect(&addr).await;
    const COUNT: usize = 5000;
    let value = vec![b'v'; 1000];
    let mut pipeline = client.pipeline();
    for index in 0..COUNT {
        pipeline.set(format!("p{index}"), &value, index as u32, 0)?;
    }
    for index in 0..COUNT {
        pipeline.get(format!("p{index}"))?;
    }
    pipeline.raw(b"bogus\r\n", 1).incr("p0", 1)?;
    assert_eq!(pipeline.len(), 2 * COUNT + 2);
    let replies = pipeline.execute().await?;
    assert_eq!(replies.len(), 2 * COUNT + 2);
    for reply in &replies[..COUNT] {
        assert_eq!(reply, &Response::Status(Status::Stored));
    }
    for (index, reply) in replies[COUNT..2 * COUNT].iter().enumerate() {
        let Response::Values(items) = reply else {
            panic!("not values: {reply:?}")
        };
        assert_eq!(items[0].key, format!("p{index}").into_bytes());
        assert_eq!(items[0].flags, index as u32);
    }
    assert!(matches!(replies[2 * COUNT], Response::Error(_)));
    assert!(matches!(replies[2 * COUNT + 1], Response::Error(_)));
    Ok(())
}
