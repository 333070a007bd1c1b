//! Blob files: writing them, reading them, and removing them once unused.

use super::super::{Embedded, blocking, io_err, topics};
use super::index::{self, Layout};
use crate::{Blob, BlobWriter, ObjectReader, Result, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use rusqlite::Connection;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Bytes a writer gathers before handing them to the file system.
const WRITE_BUFFER: usize = 1 << 20;
/// The most bytes a reader yields at once.
const READ_CHUNK: u64 = 256 << 10;

/// What the embedded backend keeps about blob files beside the index.
pub(in crate::embedded) struct State {
    /// `<data>/objects`.
    pub dir: PathBuf,
    pins: Mutex<Pins>,
    /// Trashed blobs whose files are gone, for the next job to forget.
    pub forget: Mutex<Vec<String>>,
    /// When unused blobs were last looked for (Unix milliseconds).
    pub last_reclaim: AtomicU64,
}

/// Blobs that reads in progress use, and those of them no object uses any
/// more, whose files go when the last such read ends.
#[derive(Default)]
struct Pins {
    reading: HashMap<String, usize>,
    deferred: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn new(dir: PathBuf) -> State {
        State {
            dir,
            pins: Mutex::default(),
            forget: Mutex::default(),
            last_reclaim: AtomicU64::new(topics::now_ms()),
        }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        blob_path(&self.dir, id)
    }

    /// Removes the files of blobs no object uses any more (they are in the
    /// trash, committed), except those a read still uses: they go when it ends.
    pub fn remove(&self, ids: Vec<String>) {
        let doomed: Vec<String> = {
            let mut pins = lock(&self.pins);
            ids.into_iter()
                .filter(|id| {
                    let reading = pins.reading.contains_key(id);
                    if reading {
                        pins.deferred.insert(id.clone());
                    }
                    !reading
                })
                .collect()
        };
        self.unlink(doomed);
    }

    fn unlink(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let gone: Vec<String> = ids
            .into_iter()
            .filter(|id| match std::fs::remove_file(self.path(id)) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            })
            .collect();
        // A file that could not be removed keeps its trash entry, for the
        // sweep at the next start.
        lock(&self.forget).extend(gone);
    }

    /// Pins the blobs of an object being read, while the index read that
    /// found them still holds the pins: see [`Reader`].
    fn pin(pins: &mut Pins, layout: &Layout) {
        for (id, _) in layout {
            *pins.reading.entry(id.clone()).or_default() += 1;
        }
    }

    fn unpin(&self, ids: &[String]) {
        let mut doomed = Vec::new();
        {
            let mut pins = lock(&self.pins);
            for id in ids {
                if let Some(n) = pins.reading.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        pins.reading.remove(id);
                        if pins.deferred.remove(id) {
                            doomed.push(id.clone());
                        }
                    }
                }
            }
        }
        self.unlink(doomed);
    }
}

pub(super) fn blob_path(objects: &Path, id: &str) -> PathBuf {
    objects.join(&id[..2]).join(id)
}

fn tmp_dir(objects: &Path) -> PathBuf {
    objects.join("tmp")
}

/// A new blob's id: random hex digits.
fn new_id() -> Result<String> {
    let mut random = [0u8; index::ID_LEN / 2];
    getrandom::fill(&mut random).map_err(|e| StoreError::Engine(format!("no random numbers: {e}")))?;
    Ok(hex::encode(random))
}

/// Removes what an earlier process left: temporary files, blobs finished
/// but never used (no writer from then can use them now), and the files
/// of trashed blobs. Files go first, then the rows that name them, so a
/// crash in between leaves rows whose files are already gone, which the
/// next sweep forgets.
pub(in crate::embedded) fn sweep_at_open(c: &Connection, objects: &Path) -> Result<()> {
    let tmp = tmp_dir(objects);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let path = entry.map_err(io_err(&tmp))?.path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
    }
    let ids: Vec<String> = c
        .prepare("SELECT id FROM blobs WHERE loose_since IS NOT NULL UNION SELECT id FROM blob_trash")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(super::super::engine_err)?;
    for id in &ids {
        let path = blob_path(objects, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
    }
    c.execute_batch("BEGIN; DELETE FROM blobs WHERE loose_since IS NOT NULL; DELETE FROM blob_trash; COMMIT;")
        .map_err(super::super::engine_err)
}

/// Writes a blob to `objects/tmp/<id>`, hashing as it goes; `finish` syncs
/// it, registers it, then moves it to `objects/<first two digits>/<id>`.
///
/// Each trip to a blocking thread does as much as it can: the file is
/// created by the first write of a full buffer (or by `finish`, for a
/// small blob), and `finish` writes the rest and syncs in one trip, since
/// every trip is a thread handover on the upload's path.
pub(super) struct Writer {
    store: Embedded,
    id: String,
    tmp: PathBuf,
    file: FileState,
    buf: Vec<u8>,
    md5: Md5,
    size: u64,
    finished: bool,
}

/// The writer's file.
enum FileState {
    /// Not created yet.
    None,
    Open(File),
    /// A write is under way on a blocking thread, or one failed.
    Away,
}

impl Writer {
    pub fn start(store: Embedded) -> Result<Writer> {
        let id = new_id()?;
        let tmp = tmp_dir(&store.inner.objects.dir).join(&id);
        Ok(Writer {
            store,
            id,
            tmp,
            file: FileState::None,
            buf: Vec::with_capacity(WRITE_BUFFER),
            md5: Md5::new(),
            size: 0,
            finished: false,
        })
    }

    /// Writes the buffer out on a blocking thread (creating the file
    /// first, if need be), then runs `then` on the file there too.
    async fn write_out<T: Send + 'static>(
        &mut self,
        then: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<(File, T)> {
        let file = match std::mem::replace(&mut self.file, FileState::Away) {
            FileState::Open(f) => Some(f),
            FileState::None => None,
            FileState::Away => {
                return Err(StoreError::Io {
                    path: self.tmp.clone(),
                    source: std::io::Error::other("an earlier write of this blob failed"),
                });
            }
        };
        let buf = std::mem::take(&mut self.buf);
        let tmp = self.tmp.clone();
        let (file, mut buf, out) = blocking(move || {
            let mut file = match file {
                Some(f) => f,
                None => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(io_err(&tmp))?,
            };
            file.write_all(&buf).map_err(io_err(&tmp))?;
            let out = then(&file).map_err(io_err(&tmp))?;
            Ok((file, buf, out))
        })
        .await?;
        buf.clear();
        self.buf = buf;
        Ok((file, out))
    }

    async fn flush(&mut self) -> Result<()> {
        let (file, ()) = self.write_out(|_| Ok(())).await?;
        self.file = FileState::Open(file);
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for Writer {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.md5.update(chunk);
        self.size += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Blob> {
        self.write_out(File::sync_all).await?;
        let blob = Blob {
            id: self.id.clone(),
            size: self.size,
            md5: self.md5.clone().finalize().into(),
        };
        // Registered before it has its real name: every file outside
        // `tmp/` is known to the index, so no sweep has to list them.
        let row = blob.clone();
        self.store
            .inner
            .events
            .run(topics::Commit::Durable, move |c| {
                index::add_blob(c, &row, topics::now_ms())
            })
            .await?;
        let (tmp, path) = (self.tmp.clone(), self.store.inner.objects.path(&blob.id));
        let objects = self.store.inner.objects.dir.clone();
        blocking(move || {
            let parent = path.parent().unwrap_or(&objects);
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                sync_dir(&objects)?;
            }
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            sync_dir(parent)
        })
        .await?;
        self.finished = true;
        Ok(blob)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A stretch of one blob's file.
struct Segment {
    id: String,
    offset: u64,
    len: u64,
}

/// Reads an object's bytes from its blobs' files, opened one at a time.
///
/// The blobs are pinned while the index read that found them holds the
/// pins, and stay pinned until the reader is dropped: a write that frees
/// one of them meanwhile leaves its file for the reader, and the last
/// reader removes it. Removal takes the same lock after its commit, so a
/// read either pinned the blobs first or found the index without them.
pub(super) struct Reader {
    state: Arc<State>,
    pinned: Vec<String>,
    segments: VecDeque<Segment>,
    open: Option<(String, Arc<File>)>,
}

impl Reader {
    /// Finds an object with `find` and pins its blobs, both under the pins' lock.
    pub fn pin<T>(
        state: &Arc<State>,
        find: impl FnOnce() -> Result<Option<(T, Layout)>>,
    ) -> Result<Option<(T, Layout, Reader)>> {
        let mut pins = lock(&state.pins);
        let Some((found, layout)) = find()? else {
            return Ok(None);
        };
        State::pin(&mut pins, &layout);
        let reader = Reader {
            state: state.clone(),
            pinned: layout.iter().map(|(id, _)| id.clone()).collect(),
            segments: VecDeque::new(),
            open: None,
        };
        Ok(Some((found, layout, reader)))
    }

    /// Reads `range` of the object whose blobs are `layout`.
    pub fn select(&mut self, layout: &Layout, range: std::ops::Range<u64>) {
        let mut at = 0;
        for (id, size) in layout {
            let (start, end) = (range.start.max(at), range.end.min(at + size));
            if start < end {
                self.segments.push_back(Segment {
                    id: id.clone(),
                    offset: start - at,
                    len: end - start,
                });
            }
            at += size;
        }
    }
}

#[async_trait]
impl ObjectReader for Reader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let Some(segment) = self.segments.front() else {
            return Ok(None);
        };
        let file = match &self.open {
            Some((id, file)) if *id == segment.id => file.clone(),
            _ => {
                let path = self.state.path(&segment.id);
                let file = Arc::new(blocking(move || File::open(&path).map_err(io_err(&path))).await?);
                self.open = Some((segment.id.clone(), file.clone()));
                file
            }
        };
        let (offset, n) = (segment.offset, segment.len.min(READ_CHUNK));
        let path = self.state.path(&segment.id);
        let buf = blocking(move || {
            let mut buf = vec![0; n as usize];
            file.read_exact_at(&mut buf, offset).map_err(io_err(&path))?;
            Ok(buf)
        })
        .await?;
        if let Some(segment) = self.segments.front_mut() {
            segment.offset += n;
            segment.len -= n;
            if segment.len == 0 {
                self.segments.pop_front();
            }
        }
        Ok(Some(Bytes::from(buf)))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.state.unpin(&self.pinned);
    }
}
