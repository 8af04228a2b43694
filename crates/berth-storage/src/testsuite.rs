//! The driver contract as one test suite that every driver runs (filesystem, inmemory, and
//! later S3), so drivers cannot drift apart. It panics with a message on the first violation;
//! call it from a `#[tokio::test]` with a fresh, empty driver.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::{ListFrom, ListPage, StorageDriver, StorageError};

async fn read_all(d: &dyn StorageDriver, path: &str, offset: u64, len: Option<u64>) -> Vec<u8> {
    let s = d
        .reader(path, offset, len)
        .await
        .unwrap_or_else(|e| panic!("reader {path}: {e}"));
    let chunks: Vec<Bytes> = s
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    chunks.concat()
}

/// Staged objects: appends in many commits (sizes that straddle multipart part boundaries
/// for drivers that have parts), resumed from the state each commit returns, finished into a
/// regular object. A driver with state must also survive a crash between a commit and the
/// caller persisting its state: resuming from the previous state and writing different bytes
/// must give the previous bytes plus the new ones.
async fn staged_appends(d: &dyn StorageDriver) {
    let data: Vec<u8> = (0..13_000_000u32).map(|i| (i % 239) as u8).collect();
    let cuts = [0, 1, 3 << 20, 7 << 20, (7 << 20) + 5, 12 << 20, data.len()];
    let mut state: Option<Bytes> = None;
    for w in cuts.windows(2) {
        let mut writer = d.append("/stage/data", state.clone()).await.unwrap();
        assert_eq!(writer.size(), w[0] as u64, "resumed at the committed size");
        for piece in data[w[0]..w[1]].chunks(1_000_003) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert_eq!(writer.size(), w[1] as u64);
        let new = writer.commit().await.unwrap();
        if let (Some(old), Some(new)) = (&state, &new) {
            d.release_append(old, new).await;
        }
        state = new;
    }
    d.finish_append("/stage/data", state, "/stage/data")
        .await
        .unwrap();
    assert_eq!(d.stat("/stage/data").await.unwrap().size, data.len() as u64);
    assert_eq!(read_all(d, "/stage/data", 0, None).await, data);
    assert_eq!(
        read_all(d, "/stage/data", 6 << 20, Some(10)).await,
        &data[6 << 20..(6 << 20) + 10]
    );
    d.move_object("/stage/data", "/blobs/final").await.unwrap();
    assert_eq!(read_all(d, "/blobs/final", 0, None).await, data);
    // Finished straight into another path, as an upload becomes a blob: large and small.
    for (name, len) in [("large", 12 << 20), ("small", 1000)] {
        let staged = format!("/stage2/{name}");
        let mut w = d.append(&staged, None).await.unwrap();
        w.write(Bytes::copy_from_slice(&data[..len])).await.unwrap();
        let s = w.commit().await.unwrap();
        let mut w = d.append(&staged, s).await.unwrap();
        w.write(Bytes::copy_from_slice(&data[len..len + 10]))
            .await
            .unwrap();
        let s = w.commit().await.unwrap();
        let dest = format!("/blobs/{name}");
        d.finish_append(&staged, s, &dest).await.unwrap();
        assert_eq!(
            read_all(d, &dest, 0, None).await,
            &data[..len + 10],
            "{name}"
        );
    }
    // A staged object that never got a byte finishes empty.
    let w = d.append("/stage3/data", None).await.unwrap();
    let s = w.commit().await.unwrap();
    d.finish_append("/stage3/data", s, "/blobs/empty")
        .await
        .unwrap();
    assert_eq!(d.stat("/blobs/empty").await.unwrap().size, 0);
    d.finish_append("/never/opened", None, "/blobs/empty2")
        .await
        .unwrap();
    assert_eq!(d.stat("/blobs/empty2").await.unwrap().size, 0);
    // stat_object: objects only.
    assert!(d.stat_object("/blobs/small").await.is_ok());
    assert!(d.stat_object("/blobs").await.unwrap_err().is_not_found());
    assert!(d
        .stat_object("/blobs/none")
        .await
        .unwrap_err()
        .is_not_found());

    // Crash between commit and persisting the new state.
    let mut w = d.append("/crash/data", None).await.unwrap();
    w.write(Bytes::from_static(b"first ")).await.unwrap();
    let s1 = w.commit().await.unwrap();
    if s1.is_some() {
        let mut w = d.append("/crash/data", s1.clone()).await.unwrap();
        w.write(Bytes::from(vec![b'x'; 6 << 20])).await.unwrap();
        let _lost = w.commit().await.unwrap();
        let mut w = d.append("/crash/data", s1.clone()).await.unwrap();
        assert_eq!(w.size(), 6);
        w.write(Bytes::from_static(b"second")).await.unwrap();
        let s3 = w.commit().await.unwrap();
        d.finish_append("/crash/data", s3, "/crash/data")
            .await
            .unwrap();
        assert_eq!(read_all(d, "/crash/data", 0, None).await, b"first second");
    }
    // A directory whose objects the caller knows goes, named objects that do not exist
    // included; so does one that is already gone.
    for name in ["startedat", "berthstate"] {
        d.put_content(&format!("/known/{name}"), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    d.delete_dir_known("/known", &["startedat", "berthstate", "data"])
        .await
        .unwrap();
    for name in ["startedat", "berthstate"] {
        let p = format!("/known/{name}");
        assert!(d.stat(&p).await.unwrap_err().is_not_found(), "{p}");
    }
    assert!(d.stat("/known").await.unwrap_err().is_not_found());
    d.delete_dir_known("/known", &["startedat"]).await.unwrap();

    // Aborting is allowed at any point.
    let mut w = d.append("/abort/data", None).await.unwrap();
    w.write(Bytes::from(vec![1u8; 6 << 20])).await.unwrap();
    let s = w.commit().await.unwrap();
    d.abort_append("/abort/data", s).await.unwrap();
    let _ = d.delete("/abort").await;
}

/// `touch` moves the time `stat_touched` reports forward, keeps the bytes, and says
/// `NotFound` for a missing object. S3 reports times in whole seconds, hence the pause.
async fn touch(d: &dyn StorageDriver) {
    d.put_content("/touch/obj", Bytes::from_static(b"keep"))
        .await
        .unwrap();
    let before = d.stat_touched("/touch/obj").await.unwrap().modified;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let asked = std::time::SystemTime::now();
    d.touch("/touch/obj").await.unwrap();
    // A moved object's time is the move's.
    d.put_content("/touch/src", Bytes::from_static(b"m"))
        .await
        .unwrap();
    let old = d.stat_touched("/touch/src").await.unwrap().modified;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    d.move_object("/touch/src", "/touch/dst").await.unwrap();
    assert!(d.stat_touched("/touch/dst").await.unwrap().modified > old);
    let after = d.stat_touched("/touch/obj").await.unwrap();
    assert!(
        after.modified > before,
        "touch did not move the time forward"
    );
    // Whole-second clocks: the touch is no earlier than the second it was asked in.
    let floor = asked - std::time::Duration::from_secs(1);
    assert!(after.modified >= floor, "touch time is in the past");
    assert_eq!(after.size, 4);
    assert_eq!(d.get_content("/touch/obj").await.unwrap(), "keep");
    assert!(d.touch("/touch/none").await.unwrap_err().is_not_found());
    assert!(d
        .stat_touched("/touch/none")
        .await
        .unwrap_err()
        .is_not_found());
    // Deleting the directory takes whatever the driver keeps for touches with it.
    d.delete("/touch").await.unwrap();
    assert!(d.list("/touch").await.unwrap_err().is_not_found());
}

/// Runs every contract check against `d`.
/// `list_page`: one flat key space in byte order (`a-b` and `a.c` before `a/`, `a/0c` before
/// `a/_`), rolled up at the first delimiter, paged by tokens without loss or repetition.
async fn list_pages(d: &dyn StorageDriver) {
    for p in [
        "/l/a/_m/x",
        "/l/a/_l/y",
        "/l/a/_l/q/r",
        "/l/a-b/_m/x",
        "/l/a/0c/_m/x",
        "/l/a/b/_u/z",
        "/l/a.c/file",
        "/l/z",
    ] {
        d.put_content(p, Bytes::from_static(b"12")).await.unwrap();
    }
    async fn all(d: &dyn StorageDriver, delimiter: Option<&str>, max: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut from = ListFrom::Start;
        loop {
            let page = d.list_page("/l", delimiter, from, max).await.unwrap();
            assert!(page.entries.len() <= max, "{delimiter:?} {max}");
            for e in &page.entries {
                assert_eq!(e.rolled, delimiter.is_some_and(|dl| e.key.ends_with(dl)));
                if !e.rolled {
                    assert_eq!(e.size, 2, "{}", e.key);
                }
            }
            keys.extend(page.entries.into_iter().map(|e| e.key));
            match page.next {
                Some(t) => from = ListFrom::Token(t),
                None => return keys,
            }
        }
    }
    let flat = [
        "a-b/_m/x",
        "a.c/file",
        "a/0c/_m/x",
        "a/_l/q/r",
        "a/_l/y",
        "a/_m/x",
        "a/b/_u/z",
        "z",
    ];
    let rolled = ["a-b/_", "a.c/file", "a/0c/_", "a/_", "a/b/_", "z"];
    for max in [1, 2, 3, 1000] {
        assert_eq!(all(d, None, max).await, flat, "max {max}");
        assert_eq!(all(d, Some("/_"), max).await, rolled, "max {max}");
    }
    let after = d
        .list_page("/l", Some("/_"), ListFrom::After("a.c/file".into()), 1000)
        .await
        .unwrap();
    let keys: Vec<&str> = after.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a/0c/_", "a/_", "a/b/_", "z"]);
    assert_eq!(after.next, None);
    let dirs = d
        .list_page("/l/a", Some("/"), ListFrom::Start, 1000)
        .await
        .unwrap();
    let keys: Vec<&str> = dirs.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["0c/", "_l/", "_m/", "b/"]);
    let none = d
        .list_page("/nowhere", Some("/"), ListFrom::Start, 10)
        .await
        .unwrap();
    assert_eq!(none, ListPage::default());
    d.delete("/l").await.unwrap();
}

pub async fn run(d: &dyn StorageDriver) {
    // Missing objects are NotFound, for every operation.
    assert!(d.get_content("/missing").await.unwrap_err().is_not_found());
    assert!(d.stat("/missing").await.unwrap_err().is_not_found());
    assert!(d.list("/missing").await.unwrap_err().is_not_found());
    assert!(d.delete("/missing").await.unwrap_err().is_not_found());
    assert!(d
        .move_object("/missing", "/x")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(d
        .reader("/missing", 0, None)
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));

    // Invalid paths are refused before touching anything.
    for bad in ["relative", "/a/../b", "/a//b", "/a/"] {
        assert!(
            matches!(
                d.put_content(bad, Bytes::new()).await,
                Err(StorageError::InvalidPath(_))
            ),
            "{bad}"
        );
    }

    // put/get, overwrite, parents created.
    d.put_content("/dir/sub/obj", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(
        d.get_content("/dir/sub/obj").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    d.put_content("/dir/sub/obj", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(
        d.get_content("/dir/sub/obj").await.unwrap(),
        Bytes::from_static(b"hi")
    );
    let st = d.stat("/dir/sub/obj").await.unwrap();
    assert_eq!((st.size, st.is_dir), (2, false));
    assert!(d.stat("/dir/sub").await.unwrap().is_dir);

    // Empty objects exist.
    d.put_content("/dir/empty", Bytes::new()).await.unwrap();
    assert_eq!(d.stat("/dir/empty").await.unwrap().size, 0);

    // list: direct children only, sorted, full paths.
    d.put_content("/dir/a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert_eq!(
        d.list("/dir").await.unwrap(),
        vec!["/dir/a", "/dir/empty", "/dir/sub"]
    );
    assert!(d.list("/").await.unwrap().contains(&"/dir".to_owned()));
    let mut names = d.list_names("/dir").await.unwrap();
    names.sort();
    assert_eq!(names, vec!["a", "empty", "sub"]);
    assert!(d.list_names("/missing").await.unwrap_err().is_not_found());
    list_pages(d).await;

    // Ranged reads.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    d.put_content("/big", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(d, "/big", 0, None).await, data);
    assert_eq!(read_all(d, "/big", 10, Some(5)).await, &data[10..15]);
    assert_eq!(
        read_all(d, "/big", 2_999_990, Some(100)).await,
        &data[2_999_990..]
    );
    assert!(read_all(d, "/big", 3_000_000, None).await.is_empty());
    assert!(matches!(
        d.reader("/big", 3_000_001, None).await,
        Err(StorageError::InvalidOffset { .. })
    ));
    assert!(read_all(d, "/dir/empty", 0, None).await.is_empty());

    staged_appends(d).await;
    // move replaces the destination and removes the source.
    d.put_content("/m/src", Bytes::from_static(b"new"))
        .await
        .unwrap();
    d.put_content("/m2/dst", Bytes::from_static(b"old"))
        .await
        .unwrap();
    d.move_object("/m/src", "/m2/dst").await.unwrap();
    assert_eq!(
        d.get_content("/m2/dst").await.unwrap(),
        Bytes::from_static(b"new")
    );
    assert!(d.get_content("/m/src").await.unwrap_err().is_not_found());
    d.move_object("/m2/dst", "/fresh/parent/obj").await.unwrap();
    assert_eq!(
        d.get_content("/fresh/parent/obj").await.unwrap(),
        Bytes::from_static(b"new")
    );

    // delete of a tree.
    d.delete("/dir").await.unwrap();
    assert!(d.stat("/dir/sub/obj").await.unwrap_err().is_not_found());
    assert!(d.stat("/dir").await.unwrap_err().is_not_found());

    touch(d).await;

    // Concurrent overwrites of one object leave one complete version.
    let big_a = Bytes::from(vec![b'a'; 100_000]);
    let big_b = Bytes::from(vec![b'b'; 100_000]);
    let (ra, rb) = tokio::join!(
        d.put_content("/race", big_a.clone()),
        d.put_content("/race", big_b.clone())
    );
    ra.unwrap();
    rb.unwrap();
    let got = d.get_content("/race").await.unwrap();
    assert!(got == big_a || got == big_b, "torn object");
}
