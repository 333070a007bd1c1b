//! Conformance checks of [`Objects`]: what a user of an S3-style store
//! relies on, and the promise that an object's change and its events are
//! one transaction.

use super::{DAY, event};
use crate::{
    Blob, BucketConfig, ByteRange, Condition, CopyFrom, ListQuery, ObjectAttrs, ObjectRead, ObjectWrite,
    Objects, StoreError, Stores, Topics,
};
use md5::{Digest, Md5};
use std::time::Duration;

mod listing;
mod multipart;

pub(super) use listing::objects_list_like_list_objects_v2;
pub(super) use multipart::objects_multipart_uploads;

/// Writes `data` as a blob, in uneven chunks.
pub async fn blob(o: &dyn Objects, data: &[u8]) -> Blob {
    let mut w = o.blob_writer().await.unwrap();
    for chunk in data.chunks(100_003) {
        w.write(chunk).await.unwrap();
    }
    w.finish().await.unwrap()
}

/// Reads the rest of a read.
pub async fn read_all(read: &mut ObjectRead) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = read.body.next_chunk().await.unwrap() {
        assert!(!chunk.is_empty(), "a chunk holds bytes");
        out.extend_from_slice(&chunk);
    }
    out
}

/// `n` bytes that differ along the way, so misplaced ranges show.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ (i >> 8) as u8)
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

fn typed(content_type: &str) -> ObjectAttrs {
    ObjectAttrs {
        content_type: Some(content_type.into()),
        user_meta: vec![("owner".into(), "ada".into()), ("case".into(), "Mixed".into())],
    }
}

async fn put(o: &dyn Objects, bucket: &str, key: &str, data: &[u8]) -> crate::ObjectMeta {
    let blob = blob(o, data).await;
    let write = ObjectWrite {
        blob,
        attrs: ObjectAttrs::default(),
    };
    o.put_object(bucket, key, write, Condition::Always, vec![])
        .await
        .unwrap()
}

async fn get(o: &dyn Objects, bucket: &str, key: &str, range: Option<ByteRange>) -> Vec<u8> {
    let mut read = o
        .get_object(bucket, key, range)
        .await
        .unwrap()
        .expect("object exists");
    read_all(&mut read).await
}

/// The ids of the events stored in `topic`.
async fn stored_ids(t: &dyn Topics, topic: &str) -> Vec<String> {
    t.read(topic, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

pub(super) async fn objects_round_trip_with_metadata(s: &Stores) {
    let o = &*s.objects;
    let missing = o
        .put_object(
            "b",
            "k",
            ObjectWrite {
                blob: blob(o, b"x").await,
                attrs: ObjectAttrs::default(),
            },
            Condition::Always,
            vec![],
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::UnknownBucket(_))),
        "{missing:?}"
    );
    assert!(o.put_bucket("b", BucketConfig::default()).await.unwrap());
    let config = BucketConfig {
        max_bytes: Some(1 << 30),
        expire_after_ms: Some(DAY.max_age_ms),
    };
    assert!(!o.put_bucket("b", config).await.unwrap(), "a second put updates");
    let data = pattern(700_000, 1);
    let b = blob(o, &data).await;
    assert_eq!((b.size, hex::encode(b.md5)), (data.len() as u64, md5_hex(&data)));
    let write = ObjectWrite {
        blob: b.clone(),
        attrs: typed("image/png"),
    };
    let meta = o
        .put_object("b", "dir/photo.png", write.clone(), Condition::Always, vec![])
        .await
        .unwrap();
    assert_eq!(meta.etag, md5_hex(&data));
    assert_eq!(
        (meta.size, meta.parts, meta.attrs.clone()),
        (data.len() as u64, 0, typed("image/png"))
    );
    assert_eq!(
        o.head_object("b", "dir/photo.png").await.unwrap(),
        Some(meta.clone())
    );
    let mut read = o.get_object("b", "dir/photo.png", None).await.unwrap().unwrap();
    assert_eq!(
        (read.meta.clone(), read.range.clone()),
        (meta.clone(), 0..data.len() as u64)
    );
    assert!(read_all(&mut read).await == data, "the bytes come back");
    // A blob is taken by one write.
    let again = o.put_object("b", "other", write, Condition::Always, vec![]).await;
    assert!(matches!(again, Err(StoreError::UnknownBlob(_))), "{again:?}");
    // Empty objects are objects.
    let empty = put(o, "b", "empty", b"").await;
    assert_eq!(empty.etag, md5_hex(b""));
    assert!(get(o, "b", "empty", None).await.is_empty());
    let info = o.bucket("b").await.unwrap().unwrap();
    assert_eq!(
        (info.objects, info.bytes, info.config),
        (2, data.len() as u64, config)
    );
    assert_eq!(o.buckets().await.unwrap(), vec![info]);
    assert_eq!(o.head_object("b", "nothing").await.unwrap(), None);
    assert!(o.get_object("b", "nothing", None).await.unwrap().is_none());
    for err in [
        o.head_object("nob", "k").await.err(),
        o.get_object("nob", "k", None).await.err(),
        o.list_objects("nob", ListQuery::default()).await.err(),
        o.delete_object("nob", "k", vec![]).await.err(),
    ] {
        assert!(matches!(err, Some(StoreError::UnknownBucket(_))), "{err:?}");
    }
}

pub(super) async fn objects_overwrite_delete_and_empty_buckets(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    put(o, "b", "k", b"first version").await;
    let second = put(o, "b", "k", b"second").await;
    assert_eq!(get(o, "b", "k", None).await, b"second");
    let info = o.bucket("b").await.unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (1, 6));
    let err = o.delete_bucket("b").await.unwrap_err();
    assert!(matches!(err, StoreError::BucketNotEmpty(_)), "{err}");
    assert_eq!(o.delete_object("b", "k", vec![]).await.unwrap(), Some(second));
    assert_eq!(o.head_object("b", "k").await.unwrap(), None);
    assert!(o.get_object("b", "k", None).await.unwrap().is_none());
    assert_eq!(o.delete_object("b", "k", vec![]).await.unwrap(), None);
    let info = o.bucket("b").await.unwrap().unwrap();
    assert_eq!((info.objects, info.bytes), (0, 0));
    // Many at once.
    put(o, "b", "x", b"1").await;
    put(o, "b", "y", b"22").await;
    let gone = o
        .delete_objects(
            "b",
            vec![
                ("x".into(), vec![]),
                ("nope".into(), vec![]),
                ("y".into(), vec![]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        gone.iter()
            .map(|m| m.as_ref().map(|m| m.size))
            .collect::<Vec<_>>(),
        [Some(1), None, Some(2)]
    );
    // An upload in progress does not keep a bucket; deleting it aborts the upload.
    let upload = o.create_upload("b", "big", ObjectAttrs::default()).await.unwrap();
    o.put_part(&upload, 1, blob(o, b"part").await).await.unwrap();
    o.delete_bucket("b").await.unwrap();
    assert_eq!(o.bucket("b").await.unwrap(), None);
    assert_eq!(o.upload(&upload).await.unwrap(), None);
    let err = o.delete_bucket("b").await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownBucket(_)), "{err}");
    // A new bucket of the same name starts empty.
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    assert_eq!(o.bucket("b").await.unwrap().unwrap().objects, 0);
}

pub(super) async fn objects_range_reads(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let data = pattern(600_000, 2);
    put(o, "b", "k", &data).await;
    let span = |start, end| Some(ByteRange::Span { start, end });
    assert_eq!(get(o, "b", "k", span(0, 9)).await, data[..10]);
    assert_eq!(
        get(o, "b", "k", span(300_000, 400_000)).await,
        data[300_000..=400_000]
    );
    assert_eq!(get(o, "b", "k", span(599_990, 10_000_000)).await, data[599_990..]);
    assert_eq!(
        get(o, "b", "k", Some(ByteRange::From(123_456))).await,
        data[123_456..]
    );
    assert_eq!(
        get(o, "b", "k", Some(ByteRange::Last(5))).await,
        data[data.len() - 5..]
    );
    assert_eq!(get(o, "b", "k", Some(ByteRange::Last(1 << 40))).await, data);
    let read = o.get_object("b", "k", span(10, 19)).await.unwrap().unwrap();
    assert_eq!((read.range.clone(), read.meta.size), (10..20, data.len() as u64));
    for bad in [span(600_000, 600_001), span(5, 4), Some(ByteRange::Last(0))] {
        let err = o.get_object("b", "k", bad).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidRange { size: 600_000 }), "{err}");
    }
    // Across the parts of a multipart object.
    let parts = [pattern(1000, 3), pattern(1500, 4), pattern(700, 5)];
    let upload = o
        .create_upload("b", "multi", ObjectAttrs::default())
        .await
        .unwrap();
    let mut listed = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i as u32 + 1;
        listed.push((n, o.put_part(&upload, n, blob(o, p).await).await.unwrap()));
    }
    o.complete_upload(&upload, listed, 0, Condition::Always, vec![])
        .await
        .unwrap();
    let whole = parts.concat();
    assert_eq!(get(o, "b", "multi", None).await, whole);
    assert_eq!(get(o, "b", "multi", span(900, 2600)).await, whole[900..=2600]);
    assert_eq!(get(o, "b", "multi", span(1000, 2499)).await, whole[1000..2500]);
    assert_eq!(
        get(o, "b", "multi", Some(ByteRange::Last(701))).await,
        whole[whole.len() - 701..]
    );
}

pub(super) async fn objects_conditional_writes(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let write = |data: &'static [u8]| async move {
        ObjectWrite {
            blob: blob(o, data).await,
            attrs: ObjectAttrs::default(),
        }
    };
    let first = o
        .put_object("b", "k", write(b"one").await, Condition::Absent, vec![])
        .await
        .unwrap();
    let err = o
        .put_object("b", "k", write(b"two").await, Condition::Absent, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    let stale = Condition::Etag(md5_hex(b"zero"));
    let err = o
        .put_object("b", "k", write(b"two").await, stale.clone(), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    assert_eq!(get(o, "b", "k", None).await, b"one");
    // If-Match as it arrives on the wire, quoted.
    let quoted = Condition::Etag(format!("\"{}\"", first.etag));
    o.put_object("b", "k", write(b"two").await, quoted, vec![])
        .await
        .unwrap();
    assert_eq!(get(o, "b", "k", None).await, b"two");
    let err = o
        .put_object("b", "absent", write(b"x").await, stale, vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "no object has no etag: {err}"
    );
    // A write that failed took its blob all the same.
    let b = blob(o, b"three").await;
    let w = ObjectWrite {
        blob: b,
        attrs: ObjectAttrs::default(),
    };
    o.put_object("b", "k", w.clone(), Condition::Absent, vec![])
        .await
        .unwrap_err();
    let err = o
        .put_object("b", "k", w, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownBlob(_)), "{err}");
}

pub(super) async fn objects_events_commit_with_the_change(s: &Stores) {
    let (o, t) = (&*s.objects, &*s.topics);
    t.put_topic("uploads", DAY).await.unwrap();
    t.put_topic("audit", DAY).await.unwrap();
    let quota = BucketConfig {
        max_bytes: Some(10),
        expire_after_ms: None,
    };
    o.put_bucket("b", quota).await.unwrap();
    let write = |data: &'static [u8]| async move {
        ObjectWrite {
            blob: blob(o, data).await,
            attrs: ObjectAttrs::default(),
        }
    };
    let ev = |id: &str| ("uploads".to_string(), event(id, None));
    o.put_object(
        "b",
        "k",
        write(b"12345").await,
        Condition::Always,
        vec![ev("put-1"), ("audit".into(), event("audit-1", None))],
    )
    .await
    .unwrap();
    assert_eq!(stored_ids(t, "uploads").await, ["put-1"]);
    assert_eq!(stored_ids(t, "audit").await, ["audit-1"]);
    // An unknown topic fails the whole write: no object, no event anywhere.
    let err = o
        .put_object(
            "b",
            "k2",
            write(b"x").await,
            Condition::Always,
            vec![ev("put-2"), ("nowhere".into(), event("n", None))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    assert_eq!(o.head_object("b", "k2").await.unwrap(), None);
    // Over the quota: refused, no event. Replacing counts the old size as freed.
    let err = o
        .put_object(
            "b",
            "k2",
            write(b"123456").await,
            Condition::Always,
            vec![ev("put-3")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                max_bytes: 10,
                needed: 11,
                ..
            }
        ),
        "{err}"
    );
    o.put_object(
        "b",
        "k",
        write(b"1234567890").await,
        Condition::Always,
        vec![ev("put-4")],
    )
    .await
    .unwrap();
    // A failed condition: no event.
    let err = o
        .put_object("b", "k", write(b"x").await, Condition::Absent, vec![ev("put-5")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    assert_eq!(stored_ids(t, "uploads").await, ["put-1", "put-4"]);
    // Deleting nothing appends nothing; deleting something does.
    assert_eq!(
        o.delete_object("b", "none", vec![ev("del-0")]).await.unwrap(),
        None
    );
    let err = o
        .delete_object("b", "k", vec![("nowhere".into(), event("d", None))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    assert!(
        o.head_object("b", "k").await.unwrap().is_some(),
        "a failed delete deletes nothing"
    );
    o.delete_object("b", "k", vec![ev("del-1")])
        .await
        .unwrap()
        .unwrap();
    // Copies and completed uploads notify the same way.
    put(o, "b", "src", b"abc").await;
    let from = CopyFrom {
        bucket: "b".into(),
        key: "src".into(),
        if_match: None,
    };
    o.copy_object(from, "b", "dst", None, Condition::Always, vec![ev("copy-1")])
        .await
        .unwrap();
    let upload = o.create_upload("b", "mp", ObjectAttrs::default()).await.unwrap();
    let etag = o.put_part(&upload, 1, blob(o, b"p").await).await.unwrap();
    let err = o
        .complete_upload(
            &upload,
            vec![(1, etag.clone())],
            0,
            Condition::Always,
            vec![("nowhere".into(), event("c", None))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTopic(_)), "{err}");
    assert!(
        o.upload(&upload).await.unwrap().is_some(),
        "a failed completion leaves the upload"
    );
    o.complete_upload(&upload, vec![(1, etag)], 0, Condition::Always, vec![ev("mp-1")])
        .await
        .unwrap();
    assert_eq!(
        stored_ids(t, "uploads").await,
        ["put-1", "put-4", "del-1", "copy-1", "mp-1"]
    );
}

pub(super) async fn objects_copy_shares_content(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    o.put_bucket(
        "c",
        BucketConfig {
            max_bytes: Some(100),
            expire_after_ms: None,
        },
    )
    .await
    .unwrap();
    let data = pattern(60, 9);
    let src_blob = blob(o, &data).await;
    let src = o
        .put_object(
            "b",
            "src",
            ObjectWrite {
                blob: src_blob,
                attrs: typed("text/plain"),
            },
            Condition::Always,
            vec![],
        )
        .await
        .unwrap();
    let from = |if_match: Option<&str>| CopyFrom {
        bucket: "b".into(),
        key: "src".into(),
        if_match: if_match.map(Into::into),
    };
    let kept = o
        .copy_object(from(None), "c", "kept", None, Condition::Always, vec![])
        .await
        .unwrap();
    assert_eq!(
        (kept.etag.as_str(), kept.size, &kept.attrs, kept.bucket.as_str()),
        (src.etag.as_str(), 60, &typed("text/plain"), "c")
    );
    let replaced = o
        .copy_object(
            from(Some(&format!("\"{}\"", src.etag))),
            "b",
            "replaced",
            Some(ObjectAttrs::default()),
            Condition::Absent,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(replaced.attrs, ObjectAttrs::default());
    let err = o
        .copy_object(from(Some("other")), "b", "x", None, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    let err = o
        .copy_object(from(None), "b", "replaced", None, Condition::Absent, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    let err = o
        .copy_object(from(None), "c", "over", None, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { .. }), "{err}");
    let missing = CopyFrom {
        key: "nothing".into(),
        ..from(None)
    };
    let err = o
        .copy_object(missing, "b", "x", None, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchKey { .. }), "{err}");
    // Copies outlive their source, and onto itself is fine.
    o.copy_object(
        from(None),
        "b",
        "src",
        Some(typed("a/b")),
        Condition::Always,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(get(o, "b", "src", None).await, data);
    o.delete_object("b", "src", vec![]).await.unwrap().unwrap();
    assert_eq!(get(o, "c", "kept", None).await, data);
    assert_eq!(get(o, "b", "replaced", None).await, data);
    o.delete_object("c", "kept", vec![]).await.unwrap();
    assert_eq!(
        get(o, "b", "replaced", Some(ByteRange::Span { start: 10, end: 19 })).await,
        data[10..20]
    );
    assert_eq!(o.bucket("c").await.unwrap().unwrap().bytes, 0);
}

pub(super) async fn objects_read_survives_overwrite_and_delete(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let old = pattern(2_000_000, 10);
    put(o, "b", "k", &old).await;
    let upload = o.create_upload("b", "mp", ObjectAttrs::default()).await.unwrap();
    let parts = [pattern(400_000, 11), pattern(400_000, 12)];
    let mut listed = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        listed.push((
            i as u32 + 1,
            o.put_part(&upload, i as u32 + 1, blob(o, p).await).await.unwrap(),
        ));
    }
    o.complete_upload(&upload, listed, 0, Condition::Always, vec![])
        .await
        .unwrap();
    let mut read = o.get_object("b", "k", None).await.unwrap().unwrap();
    let first = read.body.next_chunk().await.unwrap().unwrap();
    let mut multi = o.get_object("b", "mp", None).await.unwrap().unwrap();
    put(o, "b", "k", b"new").await;
    o.delete_object("b", "mp", vec![]).await.unwrap().unwrap();
    // Let a backend that frees bytes in the background do so.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut got = first.to_vec();
    got.extend(read_all(&mut read).await);
    assert!(got == old, "the read that started sees the old bytes");
    assert!(read_all(&mut multi).await == parts.concat(), "across parts too");
    assert_eq!(get(o, "b", "k", None).await, b"new");
    assert!(o.get_object("b", "mp", None).await.unwrap().is_none());
}
