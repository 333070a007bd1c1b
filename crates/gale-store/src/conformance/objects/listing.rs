//! Listing checks: ListObjectsV2's prefixes, delimiters, pages, and expiry candidates.

use super::{DAY, put};
use crate::{BucketConfig, ListQuery, Stores};

pub(in crate::conformance) async fn objects_list_like_list_objects_v2(s: &Stores) {
    let o = &*s.objects;
    o.put_bucket("b", BucketConfig::default()).await.unwrap();
    o.put_bucket("other", BucketConfig::default()).await.unwrap();
    put(o, "other", "a.txt", b"-").await;
    let mut keys: Vec<String> = (0..300).map(|i| format!("photos/2024/{i:04}.jpg")).collect();
    keys.extend(
        [
            "a.txt",
            "photos/2023/x.jpg",
            "photos/cover.jpg",
            "photos/2025/y.jpg",
            "photos0",
            "z/é",
            "z/e",
            "z/~",
        ]
        .map(String::from),
    );
    for k in &keys {
        put(o, "b", k, k.as_bytes()).await;
    }
    keys.sort();
    let list = |prefix: &str, delimiter: Option<&str>, start_after: Option<&str>, limit| ListQuery {
        prefix: prefix.into(),
        delimiter: delimiter.map(Into::into),
        start_after: start_after.map(Into::into),
        limit,
    };
    let names = |l: &crate::Listing| l.objects.iter().map(|m| m.key.clone()).collect::<Vec<_>>();
    // Everything, in byte order, in pages.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = o
            .list_objects("b", list("", None, after.as_deref(), 128))
            .await
            .unwrap();
        all.extend(names(&page));
        assert!(page.common_prefixes.is_empty());
        if !page.truncated {
            assert_eq!(page.next_start_after, None);
            break;
        }
        after = page.next_start_after.clone();
    }
    assert_eq!(all, keys);
    assert_eq!(
        all.iter().filter(|k| k.starts_with("z/")).collect::<Vec<_>>(),
        ["z/e", "z/~", "z/é"]
    );
    let page = o
        .list_objects("b", list("photos/", Some("/"), None, 1000))
        .await
        .unwrap();
    assert_eq!(names(&page), ["photos/cover.jpg"]);
    assert_eq!(
        page.common_prefixes,
        ["photos/2023/", "photos/2024/", "photos/2025/"]
    );
    assert!(!page.truncated);
    let page = o
        .list_objects("b", list("", Some("/"), None, 1000))
        .await
        .unwrap();
    assert_eq!(
        (names(&page), page.common_prefixes.clone()),
        (
            vec!["a.txt".to_string(), "photos0".into()],
            vec!["photos/".to_string(), "z/".into()]
        )
    );
    // A rolled-up prefix counts once toward the limit, and paging goes past it.
    let page = o
        .list_objects("b", list("photos/", Some("/"), None, 2))
        .await
        .unwrap();
    assert_eq!(
        (page.common_prefixes.clone(), page.truncated),
        (vec!["photos/2023/".to_string(), "photos/2024/".into()], true)
    );
    assert_eq!(page.next_start_after.as_deref(), Some("photos/2024/"));
    let rest = o
        .list_objects(
            "b",
            list("photos/", Some("/"), page.next_start_after.as_deref(), 2),
        )
        .await
        .unwrap();
    assert_eq!(
        (rest.common_prefixes.clone(), names(&rest), rest.truncated),
        (
            vec!["photos/2025/".to_string()],
            vec!["photos/cover.jpg".to_string()],
            false
        )
    );
    // Limits and truncation exactly at the end.
    let page = o
        .list_objects("b", list("photos/2024/", None, None, 300))
        .await
        .unwrap();
    assert_eq!((page.objects.len(), page.truncated), (300, false));
    let page = o
        .list_objects("b", list("photos/2024/", None, Some("photos/2024/0297.jpg"), 2))
        .await
        .unwrap();
    assert_eq!(
        (names(&page), page.truncated),
        (
            vec!["photos/2024/0298.jpg".to_string(), "photos/2024/0299.jpg".into()],
            false
        )
    );
    let page = o
        .list_objects("b", list("photos/2024/", None, Some("photos/2024/0296.jpg"), 2))
        .await
        .unwrap();
    assert!(page.truncated);
    assert_eq!(page.next_start_after.as_deref(), Some("photos/2024/0298.jpg"));
    // start_after before the prefix, and past everything.
    let page = o
        .list_objects("b", list("photos/2025", None, Some("a"), 10))
        .await
        .unwrap();
    assert_eq!(names(&page), ["photos/2025/y.jpg"]);
    assert!(
        o.list_objects("b", list("", None, Some("zz"), 10))
            .await
            .unwrap()
            .objects
            .is_empty()
    );
    assert!(
        o.list_objects("b", list("nothing/", Some("/"), None, 10))
            .await
            .unwrap()
            == crate::Listing::default()
    );
    let page = o.list_objects("b", list("", None, None, 1)).await.unwrap();
    assert_eq!(
        (names(&page), page.objects[0].size),
        (vec!["a.txt".to_string()], 5)
    );
    // Expiry candidates: oldest first.
    let now = page.objects[0].last_modified_ms;
    assert!(
        o.expired("b", now.saturating_sub(DAY.max_age_ms), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = o.expired("b", u64::MAX >> 1, 3).await.unwrap();
    assert_eq!(due.len(), 3);
    assert!(
        due.windows(2)
            .all(|w| w[0].last_modified_ms <= w[1].last_modified_ms)
    );
    // Expiring deletes only what is still older than the cut: an object
    // written again after it was found stays, and notifies nothing.
    let first = &due[0];
    let kept = o
        .expire_object("b", &first.key, first.last_modified_ms, vec![])
        .await
        .unwrap();
    assert!(kept.is_none(), "an object as new as the cut was expired");
    assert!(o.head_object("b", &first.key).await.unwrap().is_some());
    let gone = o
        .expire_object("b", &first.key, first.last_modified_ms + 1, vec![])
        .await
        .unwrap();
    assert_eq!(gone.map(|m| m.key), Some(first.key.clone()));
    assert!(o.head_object("b", &first.key).await.unwrap().is_none());
}
