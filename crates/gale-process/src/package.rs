//! A process function's code is its directory, shipped as one gzipped tar.
//!
//! Packing is deterministic (entries sorted, times, owners and names zeroed,
//! modes reduced to "executable or not"), so the same directory always makes
//! the same bytes and the same digest: deploying an unchanged function
//! creates no new version. Unpacking goes to a fresh directory that is
//! renamed into place only when complete, so a crash never leaves half a
//! function behind.

use crate::ProcessError;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest unpacked size accepted: guards the node's disk against a
/// compression bomb.
const MAX_UNPACKED: u64 = 1 << 30;

/// Packs `dir` (recursively; symlinks kept as links) into gzipped tar bytes.
pub fn pack(dir: &Path) -> Result<Vec<u8>, ProcessError> {
    let io = |e: std::io::Error| ProcessError::Package(format!("cannot pack {}: {e}", dir.display()));
    if !dir.is_dir() {
        return Err(ProcessError::Package(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut files = Vec::new();
    walk(dir, Path::new(""), &mut files).map_err(io)?;
    for rel in files {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(io)?;
            tar.append_link(&mut header, &rel, target).map_err(io)?;
        } else if meta.is_dir() {
            tar.append_data(&mut header, &rel, std::io::empty()).map_err(io)?;
        } else {
            let file = std::fs::File::open(&full).map_err(io)?;
            tar.append_data(&mut header, &rel, file).map_err(io)?;
        }
    }
    let gz = tar.into_inner().map_err(io)?;
    gz.finish().map_err(io)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        out.push(rel.clone());
        if kind.is_dir() {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}

/// Whether `bytes` look like a package, and whether it has an executable
/// `bootstrap` at its top (for a manifest without `command`).
pub fn inspect(bytes: &[u8]) -> Result<Contents, ProcessError> {
    let bad = |e: std::io::Error| ProcessError::Package(format!("not a function package (gzipped tar): {e}"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut contents = Contents::default();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path == Path::new("bootstrap") {
            contents.bootstrap = Some(entry.header().mode().map_err(bad)? & 0o111 != 0);
        }
        contents.files += 1;
    }
    Ok(contents)
}

/// What [`inspect`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    pub files: usize,
    /// `Some(executable)` if there is a `bootstrap` file.
    pub bootstrap: Option<bool>,
}

/// Unpacks `bytes` into `dest` (which must not exist yet), all or nothing.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), ProcessError> {
    let tmp = dest.with_extension(format!("unpacking-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        let gz = flate2::read::GzDecoder::new(bytes);
        let mut archive = tar::Archive::new(Capped {
            inner: gz,
            left: MAX_UNPACKED,
        });
        archive.set_preserve_permissions(true);
        archive.set_overwrite(false);
        // `unpack` refuses entries that would land outside `tmp`.
        archive.unpack(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        ProcessError::Package(format!("cannot unpack into {}: {e}", dest.display()))
    })
}

/// A reader that fails once it has given `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!("the package unpacks to more than {MAX_UNPACKED} bytes"))
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("gale-pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("bootstrap"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(dir.join("bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("lib/a.py"), "x = 1\n").unwrap();
        let one = pack(&dir).unwrap();
        // Touching a file changes its mtime, not the package.
        std::fs::write(dir.join("lib/a.py"), "x = 1\n").unwrap();
        assert_eq!(pack(&dir).unwrap(), one);
        let contents = inspect(&one).unwrap();
        assert_eq!(contents.bootstrap, Some(true));
        assert_eq!(contents.files, 3);

        let out = dir.with_extension("out");
        let _ = std::fs::remove_dir_all(&out);
        unpack(&one, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("lib/a.py")).unwrap(), "x = 1\n");
        let mode = std::fs::metadata(out.join("bootstrap"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "bootstrap stays executable");
        assert!(inspect(b"not a tar").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }
}
