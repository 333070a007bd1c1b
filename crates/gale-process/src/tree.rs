//! Where the process runtime keeps its files: unpacked versions, caches,
//! and instances' homes.
//!
//! A root node runs each function as a user of its own, and that user has
//! to reach the function's files: the kernel checks search permission on
//! every directory of a path, and for these users only the bits for
//! "others" count. The runtime's directory in the data directory (`0711`,
//! made so here) is not enough when an ancestor shuts others out, as a
//! `0700` home or a `mktemp -d` folder does; every start of an instance
//! would fail with "Permission denied". Changing modes outside the data
//! directory is not the node's business, so in that case the files are kept
//! in a directory of the node's own in the system temp dir instead (which
//! honours `TMPDIR`; every user must be able to enter it and run programs
//! from it, and if others may write there it must be sticky): made with a
//! random name by `mkdir` (which never follows or reuses what is already
//! there), owned by root, `0711`. All of
//! it can be unpacked again from the data directory, so it lives only as
//! long as the runtime: it is removed when the last user of it drops, and
//! its path is recorded in the data directory so that the next start
//! removes it if the node was killed instead. It is held locked (`flock`)
//! while in use: systemd-tmpfiles skips locked directories when it ages out
//! old files, and the next start leaves a locked one alone.

use crate::ProcessError;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The name of a directory made here starts with this.
const PREFIX: &str = "gale-process-";
/// The file in the runtime's directory (in the data directory) that names
/// the directory kept elsewhere.
const RECORD: &str = "elsewhere";

pub(crate) struct Tree {
    /// `functions/`, `cache/` and `instances/` are under it.
    pub path: PathBuf,
    /// Set when the tree is a directory of the node's own outside the data
    /// directory: the directory held open and locked, and the record.
    own: Option<(File, PathBuf)>,
}

impl Tree {
    /// The tree for the runtime directory `dir`: `dir` itself, unless the
    /// node runs as root and other users cannot reach it.
    pub fn open(dir: &Path) -> Result<Tree, ProcessError> {
        let temp = std::env::temp_dir();
        // Instances are handed paths under it: they must not depend on the
        // node's working directory.
        let temp = std::path::absolute(&temp).unwrap_or(temp);
        Tree::open_with(dir, &temp)
    }

    /// [`Tree::open`], with `temp` as the system temp dir.
    fn open_with(dir: &Path, temp: &Path) -> Result<Tree, ProcessError> {
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProcessError::Dir { path, source }
        };
        std::fs::create_dir_all(dir).map_err(failed(dir))?;
        // Best effort, as a node that is not root may not own it; a root
        // node can, and the check below sees the outcome.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711));
        let record = dir.join(RECORD);
        remove_previous(&record);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Functions run as the node's own user, who reaches `dir`.
            return Ok(Tree {
                path: dir.to_path_buf(),
                own: None,
            });
        }
        let Some((closed, mode)) = closed_ancestor(dir).map_err(failed(dir))? else {
            return Ok(Tree {
                path: dir.to_path_buf(),
                own: None,
            });
        };
        let refuse = |why: String| {
            ProcessError::Unreachable(format!(
                "process functions run as users of their own, who cannot enter {} (mode {mode:o}) on \
                 the way to {}, and the temp dir {} cannot hold their files instead: {why}; make {} \
                 searchable by others (chmod o+x), move the data directory, or set TMPDIR to a \
                 directory every user can enter and run programs from",
                closed.display(),
                dir.display(),
                temp.display(),
                closed.display(),
            ))
        };
        match closed_ancestor(temp) {
            Ok(None) => {}
            Ok(Some((c, m))) => {
                return Err(refuse(format!("they cannot enter {} (mode {m:o})", c.display())));
            }
            Err(e) => return Err(refuse(e.to_string())),
        }
        let temp_mode = std::fs::metadata(temp).map_err(|e| refuse(e.to_string()))?.mode();
        // Without the sticky bit, whoever may write there could move the
        // node's directory away and put one of their own in its place.
        if temp_mode & 0o022 != 0 && temp_mode & 0o1000 == 0 {
            return Err(refuse(format!(
                "other users may write to it (mode {:o}) and it lacks the sticky bit",
                temp_mode & 0o7777
            )));
        }
        if no_exec(temp).map_err(|e| refuse(e.to_string()))? {
            return Err(refuse("it is on a file system mounted noexec".into()));
        }
        let (path, lock) = make_own(temp).map_err(|e| refuse(e.to_string()))?;
        let tree = Tree {
            path,
            own: Some((lock, record.clone())),
        };
        std::fs::write(&record, tree.path.as_os_str().as_bytes()).map_err(failed(&record))?;
        // What an earlier run kept in `dir` is of no use to these users.
        for d in ["functions", "cache", "instances"] {
            let _ = std::fs::remove_dir_all(dir.join(d));
        }
        tracing::info!(
            "process functions run as users of their own, who cannot enter {} (mode {mode:o}) on the \
             way to {}; their files are kept in {} instead, until the node stops",
            closed.display(),
            dir.display(),
            tree.path.display(),
        );
        Ok(tree)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let Some((_, record)) = &self.own else {
            return;
        };
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
        // A later runtime on the same data directory may have recorded its
        // own tree there meanwhile.
        if std::fs::read(record).is_ok_and(|r| r == self.path.as_os_str().as_bytes()) {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// The outermost directory on the way to `path` (itself included) that
/// users other than its owner and group may not search, and its mode.
/// Both ways count: the path as given (which instances are handed, and
/// whose symbolic links sit in directories of their own) and the real one.
fn closed_ancestor(path: &Path) -> io::Result<Option<(PathBuf, u32)>> {
    for way in [std::path::absolute(path)?, path.canonicalize()?] {
        let mut closed = None;
        for a in way.ancestors() {
            let mode = std::fs::metadata(a)?.mode() & 0o7777;
            if mode & 0o001 == 0 {
                closed = Some((a.to_path_buf(), mode));
            }
        }
        if closed.is_some() {
            return Ok(closed);
        }
    }
    Ok(None)
}

/// Whether programs cannot be run from files under `path`.
fn no_exec(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: statvfs reads the NUL-terminated path and fills the struct.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fs.f_flag & libc::ST_NOEXEC != 0)
}

/// Opens a directory itself, never a symbolic link's target.
fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

fn flock(dir: &File, how: libc::c_int) -> io::Result<()> {
    // SAFETY: flock only takes the fd, which `dir` keeps open.
    if unsafe { libc::flock(dir.as_raw_fd(), how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a new directory in `temp` that only root may change and every
/// user may pass through, and locks it.
fn make_own(temp: &Path) -> io::Result<(PathBuf, File)> {
    for _ in 0..8 {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(format!("no random name: {e}")))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = temp.join(format!("{PREFIX}{name}"));
        // `mkdir` fails on any existing name, a planted symlink included.
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        // The directory is root's in a temp dir others cannot write to or
        // that is sticky (checked before): nobody else can rename or
        // replace it, so the path keeps naming it.
        let dir = open_dir(&path)?;
        dir.set_permissions(std::fs::Permissions::from_mode(0o711))?;
        flock(&dir, libc::LOCK_SH)?;
        return Ok((path, dir));
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every random name tried was taken",
    ))
}

/// Removes the tree an earlier run recorded, if it is still one made here
/// (root's, named so) and no running node holds it.
fn remove_previous(record: &Path) {
    let Ok(bytes) = std::fs::read(record) else {
        return;
    };
    let _ = std::fs::remove_file(record);
    let previous = PathBuf::from(std::ffi::OsString::from_vec(bytes));
    let ours = previous.is_absolute()
        && previous
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX));
    if !ours {
        return;
    }
    let free = open_dir(&previous).is_ok_and(|dir| {
        dir.metadata().is_ok_and(|m| m.uid() == 0) && flock(&dir, libc::LOCK_EX | libc::LOCK_NB).is_ok()
    });
    if free {
        match std::fs::remove_dir_all(&previous) {
            Ok(()) => tracing::info!(
                "removed {}, where a node that did not stop cleanly kept process functions' files",
                previous.display()
            ),
            Err(e) => tracing::warn!("cannot remove {}: {e}", previous.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With neither the data directory nor the temp dir within the users'
    /// reach, a root node refuses to start and says what to change.
    #[test]
    fn a_root_node_with_nowhere_to_keep_the_files_says_what_to_change() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only a node running as root runs functions as other users");
            return;
        }
        let private = std::env::temp_dir().join(format!("gale-tree-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let temp = private.join("tmp");
        std::fs::create_dir(&temp).unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o1777)).unwrap();

        let error = Tree::open_with(&private.join("data/process"), &temp)
            .err()
            .expect("nowhere to keep the files");
        let message = error.to_string();
        let expected = format!("cannot enter {} (mode 700)", private.display());
        assert!(message.contains(&expected), "{message}");
        assert!(
            message.contains("chmod o+x") && message.contains("TMPDIR"),
            "{message}"
        );
        assert!(!private.join("data/process").join(RECORD).exists());

        // A temp dir anyone may write to without the sticky bit would let
        // them swap the node's directory for one of their own.
        let shared = std::env::temp_dir().join(format!("gale-tree-test-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&shared);
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = Tree::open_with(&private.join("data/process"), &shared)
            .err()
            .expect("an unsafe temp dir is refused");
        assert!(error.to_string().contains("lacks the sticky bit"), "{error}");
        assert_eq!(
            std::fs::read_dir(&shared).unwrap().count(),
            0,
            "nothing is made there"
        );
        std::fs::remove_dir_all(&shared).unwrap();
        std::fs::remove_dir_all(&private).unwrap();
    }

    /// A symbolic link inside a closed directory closes the way, even when
    /// it points somewhere open.
    #[test]
    fn a_closed_directory_on_the_way_to_a_link_counts() {
        let base = std::env::temp_dir().join(format!("gale-tree-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (private, open) = (base.join("private"), base.join("open"));
        std::fs::create_dir_all(&private).unwrap();
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&open, private.join("link")).unwrap();

        assert_eq!(closed_ancestor(&open).unwrap(), None);
        assert_eq!(
            closed_ancestor(&private.join("link")).unwrap(),
            Some((private.clone(), 0o700))
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
