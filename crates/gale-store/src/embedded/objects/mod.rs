//! Object buckets on the embedded backend.
//!
//! **One transaction.** The node promises that an acknowledged upload
//! always produces its notification event and that a crash never produces
//! an event for an object that does not exist. So the object index lives
//! in `events.db`, beside the topics, and every change to an object is one
//! job of the event writer thread (see [`topics`](super::topics)): the
//! object row, the bucket's counters, the blob references and the events
//! commit together, fsynced, or not at all.
//!
//! **Blob layout.** Bytes are files under `<data>/objects/`, never in
//! SQLite. A writer streams into `tmp/<id>` (a random id), hashing MD5 as
//! it goes; `finish` fsyncs the file, registers the blob in the `blobs`
//! table (a durable commit), and only then renames it to
//! `<first two digits of id>/<id>` and fsyncs that directory. So every
//! file outside `tmp/` has a row, and nothing but `tmp/` ever needs
//! listing.
//!
//! **References.** An object's row lists its blobs in order (one for a
//! put, one per part for a completed multipart upload); an upload's parts
//! each name one. `blobs.refs` counts those references and moves with them
//! in the same transaction: a copy adds one to each of its source's blobs
//! instead of copying bytes, an overwrite or a delete takes one off the
//! old version's. A blob whose count reaches zero leaves `blobs` for
//! `blob_trash` in that transaction; once it has committed, its file is
//! removed and the trash entry forgotten. A read in progress pins the
//! blobs it reads (see `blobs::Reader`), and a pinned blob's file goes
//! when its last read ends instead.
//!
//! **Blobs never used.** A finished blob is "loose" (`loose_since` set)
//! until a write takes it. A write that fails discards its blob at once;
//! loose blobs no write took within [`LOOSE_BLOB_TTL`] (the uploader went
//! away) are reclaimed now and then after changes, and
//! [`Embedded::reclaim_blobs`] does it on demand.
//!
//! **Sweep.** At open, before anything else uses the database, the sweep
//! empties `tmp/`, and removes every loose blob and the files of every
//! trashed one: whatever a crash interrupted (an upload, a write between
//! its commit and removing the files it freed) is finished or undone.

mod blobs;
mod index;
mod list;
mod multipart;

pub(super) use blobs::{State, sweep_at_open};
pub(super) use index::SCHEMA;

use super::topics::{self, Commit::Durable, Commit::Relaxed};
use super::{Embedded, blocking};
use crate::{
    Blob, BlobWriter, BucketConfig, BucketInfo, ByteRange, Condition, CopyFrom, ListQuery, Listing, NewEvent,
    ObjectAttrs, ObjectMeta, ObjectRead, ObjectWrite, Objects, Page, PartInfo, Result, StoreError,
    UploadInfo,
};
use async_trait::async_trait;
use rusqlite::Connection;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a finished blob may wait for a write to take it.
pub const LOOSE_BLOB_TTL: Duration = Duration::from_secs(60 * 60);
/// How often changes look for loose blobs past [`LOOSE_BLOB_TTL`].
const RECLAIM_EVERY: Duration = Duration::from_secs(60);

type Events = Vec<(String, NewEvent)>;

impl Embedded {
    /// Runs a change to objects as a durable job, then removes the files
    /// of the blobs it freed and wakes the subscribers of its events.
    async fn change<T: Send + 'static>(
        &self,
        woken: Vec<String>,
        f: impl FnOnce(&Connection, &mut Vec<String>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (out, freed) = self
            .inner
            .events
            .run(Durable, move |c| {
                let mut freed = Vec::new();
                let out = f(c, &mut freed)?;
                Ok((out, freed))
            })
            .await?;
        for topic in woken {
            self.inner.events.wake(&topic);
        }
        self.remove_blobs(freed).await;
        if self.reclaim_due() {
            let before = topics::now_ms().saturating_sub(LOOSE_BLOB_TTL.as_millis() as u64);
            let _ = self.reclaim_blobs(before).await;
        }
        Ok(out)
    }

    /// [`change`](Embedded::change) for a write given `blob`: if the write
    /// fails, the blob is discarded (a write takes its blob either way).
    async fn change_with_blob<T: Send + 'static>(
        &self,
        blob: &Blob,
        woken: Vec<String>,
        f: impl FnOnce(&Connection, &mut Vec<String>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let result = self.change(woken, f).await;
        if let Err(e) = &result
            && !matches!(e, StoreError::UnknownBlob(_))
        {
            let id = blob.id.clone();
            let discarded = self
                .inner
                .events
                .run(Relaxed, move |c| index::discard_blob(c, &id))
                .await;
            if let Ok(true) = discarded {
                self.remove_blobs(vec![blob.id.clone()]).await;
            }
        }
        result
    }

    /// Removes the files of trashed blobs, then forgets them.
    async fn remove_blobs(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            let state = self.inner.objects.clone();
            let _ = blocking(move || {
                state.remove(ids);
                Ok(())
            })
            .await;
        }
        let forget = std::mem::take(
            &mut *self
                .inner
                .objects
                .forget
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !forget.is_empty() {
            // Lost, the entries are forgotten by the sweep at the next start.
            let _ = self
                .inner
                .events
                .run(Relaxed, move |c| index::forget_trash(c, &forget))
                .await;
        }
    }

    fn reclaim_due(&self) -> bool {
        let now = topics::now_ms();
        let last = &self.inner.objects.last_reclaim;
        let then = last.load(Ordering::Relaxed);
        now.saturating_sub(then) >= RECLAIM_EVERY.as_millis() as u64
            && last
                .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Removes blobs finished before `finished_before_ms` (Unix
    /// milliseconds) that no write has taken; returns how many. Changes do
    /// this now and then for blobs older than [`LOOSE_BLOB_TTL`].
    pub async fn reclaim_blobs(&self, finished_before_ms: u64) -> Result<usize> {
        let ids = self
            .inner
            .events
            .run(Relaxed, move |c| index::discard_loose(c, finished_before_ms))
            .await?;
        let n = ids.len();
        self.remove_blobs(ids).await;
        Ok(n)
    }
}

/// The topics events go to, to wake their subscribers.
fn topics_of(events: &Events) -> Vec<String> {
    events.iter().map(|(t, _)| t.clone()).collect()
}

fn owned(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[async_trait]
impl Objects for Embedded {
    async fn put_bucket(&self, name: &str, config: BucketConfig) -> Result<bool> {
        let name = name.to_string();
        self.inner
            .events
            .run(Durable, move |c| {
                index::put_bucket(c, &name, config, topics::now_ms())
            })
            .await
    }

    async fn bucket(&self, name: &str) -> Result<Option<BucketInfo>> {
        let name = name.to_string();
        self.read_events(move |c| index::bucket(c, &name)).await
    }

    async fn buckets(&self) -> Result<Vec<BucketInfo>> {
        self.read_events(index::buckets).await
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.change(Vec::new(), move |c, freed| index::delete_bucket(c, &name, freed))
            .await
    }

    async fn blob_writer(&self) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(blobs::Writer::start(self.clone())?))
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        write: ObjectWrite,
        cond: Condition,
        events: Events,
    ) -> Result<ObjectMeta> {
        let blob = write.blob.clone();
        let now = topics::now_ms();
        let meta = ObjectMeta {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: write.blob.size,
            etag: hex::encode(write.blob.md5),
            attrs: write.attrs,
            last_modified_ms: now,
            parts: 0,
        };
        self.change_with_blob(&blob, topics_of(&events), move |c, freed| {
            index::put(c, meta, &write.blob, &cond, events, freed)
        })
        .await
    }

    async fn copy_object(
        &self,
        from: CopyFrom,
        bucket: &str,
        key: &str,
        attrs: Option<ObjectAttrs>,
        cond: Condition,
        events: Events,
    ) -> Result<ObjectMeta> {
        let (bucket, key) = owned(bucket, key);
        self.change(topics_of(&events), move |c, freed| {
            index::copy(
                c,
                &from,
                &bucket,
                &key,
                attrs,
                &cond,
                events,
                topics::now_ms(),
                freed,
            )
        })
        .await
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>> {
        let (bucket, key) = owned(bucket, key);
        self.read_events(move |c| index::head(c, &bucket, &key)).await
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<ObjectRead>> {
        let (bucket, key) = owned(bucket, key);
        let inner = self.inner.clone();
        // Built in the blocking task: if this call is dropped meanwhile,
        // the reader (and with it the pins) goes with the task's result.
        let found = blocking(move || {
            blobs::Reader::pin(&inner.objects, || {
                let conn = inner.events_read.lock().unwrap_or_else(|p| p.into_inner());
                Ok(index::object(&conn, &bucket, &key)?.map(|o| (o.meta, o.layout)))
            })
        })
        .await?;
        let Some((meta, layout, mut reader)) = found else {
            return Ok(None);
        };
        let range = match range {
            Some(r) => r.resolve(meta.size)?,
            None => 0..meta.size,
        };
        reader.select(&layout, range.clone());
        Ok(Some(ObjectRead {
            meta,
            range,
            body: Box::new(reader),
        }))
    }

    async fn delete_object(&self, bucket: &str, key: &str, events: Events) -> Result<Option<ObjectMeta>> {
        let (bucket, key) = owned(bucket, key);
        self.change(topics_of(&events), move |c, freed| {
            index::delete(c, &bucket, &key, events, topics::now_ms(), freed)
        })
        .await
    }

    async fn delete_objects(
        &self,
        bucket: &str,
        deletes: Vec<(String, Events)>,
    ) -> Result<Vec<Option<ObjectMeta>>> {
        let bucket = bucket.to_string();
        let woken = deletes.iter().flat_map(|(_, e)| topics_of(e)).collect();
        self.change(woken, move |c, freed| {
            let now = topics::now_ms();
            deletes
                .into_iter()
                .map(|(key, events)| index::delete(c, &bucket, &key, events, now, freed))
                .collect()
        })
        .await
    }

    async fn list_objects(&self, bucket: &str, query: ListQuery) -> Result<Listing> {
        let bucket = bucket.to_string();
        self.read_events(move |c| list::list(c, &bucket, &query)).await
    }

    async fn expired(&self, bucket: &str, before_ms: u64, limit: usize) -> Result<Vec<ObjectMeta>> {
        let bucket = bucket.to_string();
        self.read_events(move |c| index::expired(c, &bucket, before_ms, limit))
            .await
    }

    async fn expire_object(
        &self,
        bucket: &str,
        key: &str,
        before_ms: u64,
        events: Events,
    ) -> Result<Option<ObjectMeta>> {
        let (bucket, key) = owned(bucket, key);
        self.change(topics_of(&events), move |c, freed| {
            match index::head(c, &bucket, &key)? {
                Some(meta) if meta.last_modified_ms < before_ms => {
                    index::delete(c, &bucket, &key, events, topics::now_ms(), freed)
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn create_upload(&self, bucket: &str, key: &str, attrs: ObjectAttrs) -> Result<String> {
        let (bucket, key) = owned(bucket, key);
        let now = topics::now_ms();
        let id = multipart::new_id(now)?;
        let made = id.clone();
        self.inner
            .events
            .run(Durable, move |c| {
                multipart::create(c, &made, &bucket, &key, &attrs, now)
            })
            .await?;
        Ok(id)
    }

    async fn put_part(&self, upload: &str, number: u32, blob: Blob) -> Result<String> {
        let upload = upload.to_string();
        let taken = blob.clone();
        self.change_with_blob(&taken, Vec::new(), move |c, freed| {
            multipart::put_part(c, &upload, number, &blob, topics::now_ms(), freed)
        })
        .await
    }

    async fn upload(&self, upload: &str) -> Result<Option<UploadInfo>> {
        let upload = upload.to_string();
        self.read_events(move |c| multipart::upload(c, &upload)).await
    }

    async fn list_parts(&self, upload: &str, after: u32, limit: usize) -> Result<Page<PartInfo>> {
        let upload = upload.to_string();
        self.read_events(move |c| multipart::list_parts(c, &upload, after, limit))
            .await
    }

    async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(String, Option<String>)>,
        limit: usize,
    ) -> Result<Page<UploadInfo>> {
        let (bucket, prefix) = owned(bucket, prefix);
        self.read_events(move |c| multipart::list_uploads(c, &bucket, &prefix, after.as_ref(), limit))
            .await
    }

    async fn abort_upload(&self, upload: &str) -> Result<()> {
        let upload = upload.to_string();
        self.change(Vec::new(), move |c, freed| multipart::abort(c, &upload, freed))
            .await
    }

    async fn complete_upload(
        &self,
        upload: &str,
        parts: Vec<(u32, String)>,
        min_part_size: u64,
        cond: Condition,
        events: Events,
    ) -> Result<ObjectMeta> {
        let upload = upload.to_string();
        self.change(topics_of(&events), move |c, freed| {
            multipart::complete(
                c,
                &upload,
                &parts,
                min_part_size,
                &cond,
                events,
                topics::now_ms(),
                freed,
            )
        })
        .await
    }
}
