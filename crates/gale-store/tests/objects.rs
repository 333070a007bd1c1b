//! What only the embedded backend promises about object buckets: blob
//! files go when nothing uses them (after the last read that started
//! before), and a crash leaves neither an event for an object that was not
//! committed nor a blob file nobody will ever remove.

use gale_store::conformance::objects::{blob, pattern, read_all};
use gale_store::conformance::{DAY, event};
use gale_store::{
    BucketConfig, Condition, CopyFrom, Embedded, ObjectAttrs, ObjectWrite, Objects, StoreError, Topics,
};
use std::path::{Path, PathBuf};

fn embedded() -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    (dir, store)
}

/// Blob files under `objects/`, and files under `objects/tmp/`.
fn files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut blobs, mut tmp) = (Vec::new(), Vec::new());
    for sub in std::fs::read_dir(dir.join("objects")).unwrap() {
        let sub = sub.unwrap().path();
        let list = if sub.ends_with("tmp") {
            &mut tmp
        } else {
            &mut blobs
        };
        for f in std::fs::read_dir(&sub).unwrap() {
            list.push(f.unwrap().path());
        }
    }
    blobs.sort();
    (blobs, tmp)
}

fn blob_files(dir: &Path) -> usize {
    files(dir).0.len()
}

/// Rows of `table` in the event database, read beside the running store.
fn rows(dir: &Path, table: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn write(blob: gale_store::Blob) -> ObjectWrite {
    ObjectWrite {
        blob,
        attrs: ObjectAttrs::default(),
    }
}

async fn put(o: &Embedded, key: &str, data: &[u8]) {
    let b = blob(o, data).await;
    o.put_object("b", key, write(b), Condition::Always, vec![])
        .await
        .unwrap();
}

#[tokio::test]
async fn embedded_frees_blob_files_nothing_uses() {
    let (dir, o) = embedded();
    let d = dir.path();
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    put(&o, "k", b"one").await;
    assert_eq!(blob_files(d), 1);
    put(&o, "k", b"two").await;
    assert_eq!(blob_files(d), 1, "an overwrite frees the old blob");
    let from = CopyFrom {
        bucket: "b".into(),
        key: "k".into(),
        if_match: None,
    };
    o.copy_object(from, "b", "copy", None, Condition::Always, vec![])
        .await
        .unwrap();
    assert_eq!(blob_files(d), 1, "a copy shares the blob");
    o.delete_object("b", "k", vec![]).await.unwrap();
    assert_eq!(blob_files(d), 1, "the copy still uses it");
    o.delete_object("b", "copy", vec![]).await.unwrap();
    assert_eq!(blob_files(d), 0);
    // A failed write does not keep its blob.
    put(&o, "k", b"three").await;
    let b = blob(&o, b"loser").await;
    assert_eq!(blob_files(d), 2);
    let err = o
        .put_object("b", "k", write(b), Condition::Absent, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    assert_eq!(blob_files(d), 1);
    // Multipart: parts not listed go at completion, an abort frees all.
    let upload = o.create_upload("b", "mp", ObjectAttrs::default()).await.unwrap();
    let mut listed = Vec::new();
    for n in 1..=3 {
        let etag = o
            .put_part(&upload, n, blob(&o, &pattern(100, n as u8)).await)
            .await
            .unwrap();
        listed.push((n, etag));
    }
    o.put_part(&upload, 2, blob(&o, b"replaced").await).await.unwrap();
    assert_eq!(blob_files(d), 4, "a part uploaded again frees the earlier one");
    listed[1].1 = o
        .put_part(&upload, 2, blob(&o, &pattern(100, 2)).await)
        .await
        .unwrap();
    o.put_part(&upload, 7, blob(&o, b"unused").await).await.unwrap();
    assert_eq!(blob_files(d), 5);
    o.complete_upload(&upload, listed, 0, Condition::Always, vec![])
        .await
        .unwrap();
    assert_eq!(blob_files(d), 4);
    let other = o.create_upload("b", "mp2", ObjectAttrs::default()).await.unwrap();
    o.put_part(&other, 1, blob(&o, b"x").await).await.unwrap();
    assert_eq!(blob_files(d), 5);
    o.abort_upload(&other).await.unwrap();
    assert_eq!(blob_files(d), 4);
    o.delete_object("b", "mp", vec![]).await.unwrap();
    assert_eq!(blob_files(d), 1);
    assert_eq!((rows(d, "blobs"), rows(d, "blob_trash")), (1, 0));
    assert!(files(d).1.is_empty(), "no temporary file is left");
}

#[tokio::test]
async fn embedded_read_keeps_a_freed_file_until_it_ends() {
    let (dir, o) = embedded();
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let data = pattern(1_000_000, 1);
    put(&o, "k", &data).await;
    let mut read = o.get_object("b", "k", None).await.unwrap().unwrap();
    let mut again = o.get_object("b", "k", None).await.unwrap().unwrap();
    o.delete_object("b", "k", vec![]).await.unwrap();
    assert_eq!(blob_files(dir.path()), 1, "two reads still use it");
    assert!(read_all(&mut read).await == data);
    drop(read);
    assert_eq!(blob_files(dir.path()), 1, "one read still does");
    drop(again.body.next_chunk().await.unwrap());
    drop(again);
    assert_eq!(blob_files(dir.path()), 0, "the last read removed it");
    put(&o, "k2", b"x").await;
    assert_eq!(rows(dir.path(), "blob_trash"), 0, "and the next change forgot it");
}

#[tokio::test]
async fn embedded_reclaims_blobs_no_write_took() {
    let (dir, o) = embedded();
    let dropped = {
        let mut w = o.blob_writer().await.unwrap();
        // More than a writer buffers: the temporary file exists.
        w.write(&pattern(1_500_000, 3)).await.unwrap();
        assert_eq!(files(dir.path()).1.len(), 1);
        w
    };
    drop(dropped);
    assert!(files(dir.path()).1.is_empty(), "a dropped writer leaves nothing");
    let b = blob(&o, b"never used").await;
    let now = b_time();
    assert_eq!(o.reclaim_blobs(now - 60_000).await.unwrap(), 0, "too young");
    assert_eq!(blob_files(dir.path()), 1);
    assert_eq!(o.reclaim_blobs(now + 60_000).await.unwrap(), 1);
    assert_eq!(blob_files(dir.path()), 0);
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let err = o
        .put_object("b", "k", write(b), Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownBlob(_)), "{err}");
    // An unused blob does not outlive the process either.
    blob(&o, b"never used either").await;
    drop(o);
    let o = Embedded::open(dir.path()).unwrap();
    assert_eq!(blob_files(dir.path()), 0);
    assert_eq!(rows(dir.path(), "blobs"), 0);
    drop(o);
}

fn b_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The data directory copied while the node is mid-way through uploads,
/// with a freed blob still in use by a read, is what a crash (kill -9)
/// leaves. Opened again, it holds the committed object and its event, and
/// nothing else: no temporary file, no blob no object uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_crash_leaves_no_stray_event_or_blob() {
    let (dir, o) = embedded();
    o.put_topic("uploads", DAY).await.unwrap();
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let kept = pattern(300_000, 1);
    let b = blob(&o, &kept).await;
    let ev = |id: &str| vec![("uploads".to_string(), event(id, None))];
    o.put_object("b", "kept", write(b), Condition::Always, ev("kept"))
        .await
        .unwrap();
    put(&o, "gone", b"deleted while read").await;
    let mut reading = o.get_object("b", "gone", None).await.unwrap().unwrap();
    o.delete_object("b", "gone", vec![]).await.unwrap();
    // Mid-way: an upload still streaming, one finished but not yet
    // committed as an object, one whose commit failed.
    let mut streaming = o.blob_writer().await.unwrap();
    streaming.write(&pattern(1_500_000, 2)).await.unwrap();
    let _finished = blob(&o, b"finished, not committed").await;
    let failed = blob(&o, b"failed").await;
    let err = o
        .put_object("b", "failed", write(failed), Condition::Always, {
            let mut e = ev("failed");
            e.push(("nowhere".into(), event("x", None)));
            e
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    let (blobs, tmp) = files(dir.path());
    assert_eq!(
        (blobs.len(), tmp.len()),
        (3, 1),
        "kept, gone (read), finished; streaming"
    );

    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    assert!(read_all(&mut reading).await == b"deleted while read");
    drop((reading, streaming, o));

    let o = Embedded::open(crashed.path()).unwrap();
    let (blobs, tmp) = files(crashed.path());
    assert!(tmp.is_empty(), "{tmp:?}");
    assert_eq!(blobs.len(), 1, "only the committed object's blob: {blobs:?}");
    assert_eq!(
        (rows(crashed.path(), "blobs"), rows(crashed.path(), "blob_trash")),
        (1, 0)
    );
    let info = o.bucket("b").await.unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (1, kept.len() as u64));
    let mut read = o.get_object("b", "kept", None).await.unwrap().unwrap();
    assert!(read_all(&mut read).await == kept);
    let events = o.read("uploads", 0, 10).await.unwrap();
    assert_eq!(events.len(), 1, "the committed object's event alone");
    assert_eq!(events[0].body, event("kept", None).body);
}
