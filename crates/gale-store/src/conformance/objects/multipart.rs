//! Multipart upload checks: parts, listings, completion and its refusals, abort.

use super::{blob, get, md5_hex, pattern, typed};
use crate::objects::multipart_etag;
use crate::{BucketConfig, Condition, ObjectAttrs, StoreError, Stores};
use md5::{Digest, Md5};

pub(in crate::conformance) async fn objects_multipart_uploads(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    let err = o
        .create_upload("nob", "k", ObjectAttrs::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownBucket(_)), "{err}");
    let upload = o
        .create_upload("b", "video.mp4", typed("video/mp4"))
        .await
        .unwrap();
    let info = o.upload(&upload).await.unwrap().unwrap();
    assert_eq!(
        (info.bucket.as_str(), info.key.as_str(), &info.attrs),
        ("b", "video.mp4", &typed("video/mp4"))
    );
    let parts = [pattern(3000, 6), pattern(3000, 7), pattern(1000, 8)];
    let mut etags = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let etag = o.put_part(&upload, i as u32 + 1, blob(o, p).await).await.unwrap();
        assert_eq!(etag, md5_hex(p));
        etags.push(etag);
    }
    // A part uploaded again replaces the earlier one.
    o.put_part(&upload, 2, blob(o, b"wrong").await).await.unwrap();
    etags[1] = o.put_part(&upload, 2, blob(o, &parts[1]).await).await.unwrap();
    o.put_part(&upload, 9, blob(o, b"never listed").await)
        .await
        .unwrap();
    let err = o
        .put_part(&upload, 10_001, blob(o, b"x").await)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidPartNumber(10_001)), "{err}");
    let err = o
        .put_part("no-such-upload", 1, blob(o, b"x").await)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchUpload(_)), "{err}");
    let listed = o.list_parts(&upload, 0, 2).await.unwrap();
    assert_eq!(
        (
            listed.items.iter().map(|p| p.number).collect::<Vec<_>>(),
            listed.truncated
        ),
        (vec![1, 2], true)
    );
    let listed = o.list_parts(&upload, 2, 10).await.unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|p| (p.number, p.size))
            .collect::<Vec<_>>(),
        [(3, 1000), (9, 12)]
    );
    assert!(!listed.truncated);
    let other = o
        .create_upload("b", "video.mp4", ObjectAttrs::default())
        .await
        .unwrap();
    let third = o.create_upload("b", "a", ObjectAttrs::default()).await.unwrap();
    let ups = o.list_uploads("b", "", None, 10).await.unwrap();
    assert_eq!(
        ups.items.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        [third.clone(), upload.clone(), other.clone()]
    );
    let ups = o
        .list_uploads("b", "video", Some(("video.mp4".into(), Some(upload.clone()))), 10)
        .await
        .unwrap();
    assert_eq!(
        ups.items.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        [other.as_str()]
    );
    let ups = o
        .list_uploads("b", "", Some(("a".into(), None)), 1)
        .await
        .unwrap();
    assert_eq!((ups.items[0].id.clone(), ups.truncated), (upload.clone(), true));
    let all = |etags: &[String]| {
        etags
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u32 + 1, e.clone()))
            .collect::<Vec<_>>()
    };
    // Refusals change nothing.
    let mut bad = all(&etags);
    bad[1].1 = md5_hex(b"wrong");
    let err = o
        .complete_upload(&upload, bad, 0, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidPart { part: 2, .. }), "{err}");
    let err = o
        .complete_upload(
            &upload,
            vec![(1, etags[0].clone()), (4, etags[0].clone())],
            0,
            Condition::Always,
            vec![],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidPart { part: 4, .. }), "{err}");
    let mut reversed = all(&etags);
    reversed.swap(0, 1);
    let err = o
        .complete_upload(&upload, reversed, 0, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidPartOrder(_)), "{err}");
    let err = o
        .complete_upload(&upload, vec![], 0, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoParts), "{err}");
    let err = o
        .complete_upload(&upload, all(&etags), 3001, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::EntityTooSmall {
                part: 1,
                size: 3000,
                min: 3001,
                ..
            }
        ),
        "{err}"
    );
    let err = o
        .complete_upload(&upload, all(&etags), 0, Condition::Etag("nope".into()), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { .. }), "{err}");
    assert_eq!(o.head_object("b", "video.mp4").await.unwrap(), None);
    // Quoted tags, as clients send them, and the last part may be small.
    let quoted: Vec<_> = all(&etags)
        .into_iter()
        .map(|(n, e)| (n, format!("\"{e}\"")))
        .collect();
    let meta = o
        .complete_upload(&upload, quoted, 3000, Condition::Absent, vec![])
        .await
        .unwrap();
    let md5s: Vec<[u8; 16]> = parts.iter().map(|p| Md5::digest(p).into()).collect();
    let mut concat = Vec::new();
    md5s.iter().for_each(|m| concat.extend_from_slice(m));
    assert_eq!(meta.etag, format!("{}-3", md5_hex(&concat)));
    assert_eq!(meta.etag, multipart_etag(&md5s));
    assert_eq!(
        (meta.size, meta.parts, meta.attrs.clone()),
        (7000, 3, typed("video/mp4"))
    );
    assert_eq!(get(o, "b", "video.mp4", None).await, parts.concat());
    assert_eq!(o.head_object("b", "video.mp4").await.unwrap(), Some(meta));
    assert_eq!(
        o.upload(&upload).await.unwrap(),
        None,
        "completing ends the upload"
    );
    let err = o.list_parts(&upload, 0, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchUpload(_)), "{err}");
    // Abort.
    o.put_part(&other, 1, blob(o, b"x").await).await.unwrap();
    o.abort_upload(&other).await.unwrap();
    assert_eq!(o.upload(&other).await.unwrap(), None);
    let err = o.abort_upload(&other).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchUpload(_)), "{err}");
    let err = o
        .complete_upload(&other, vec![(1, md5_hex(b"x"))], 0, Condition::Always, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchUpload(_)), "{err}");
    assert_eq!(o.list_uploads("b", "", None, 10).await.unwrap().items.len(), 1);
}
