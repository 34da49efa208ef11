//! Writing files so that nothing is lost: a file is written beside its destination, flushed to
//! disk and renamed over it; a directory is staged whole and swapped in. A crash leaves either
//! the old or the new content, never a mix or a truncated file. Not a general file API.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same directory, synced before the
/// rename and the directory synced after it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content produced piece by piece: `write` fills a buffered temporary file
/// (nothing is held whole in memory), which is then synced and renamed over `path`. On any error
/// the temporary file is removed and `path` is left as it was.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let written = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_parent(path);
    Ok(())
}

/// Moves the complete directory `staged` to `dst`, replacing what was there: the old `dst` is
/// moved aside first and removed only once the new one is in place.
pub fn replace_dir(staged: &Path, dst: &Path) -> Result<()> {
    let old = sibling(dst, "old");
    let had_old = dst.exists();
    if had_old {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
    }
    if let Err(e) = std::fs::rename(staged, dst) {
        if had_old {
            let _ = std::fs::rename(&old, dst);
        }
        return Err(Error::io(dst, e));
    }
    sync_parent(dst);
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Writes the directory `dst` whole: `fill` writes into a fresh staging directory beside it,
/// which then replaces `dst` ([`replace_dir`]). On an error the staging directory is removed
/// and `dst` is left as it was.
pub fn write_dir<T>(dst: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let staged = sibling(dst, "tmp");
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
    }
    std::fs::create_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
    let filled = fill(&staged);
    if filled.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    } else {
        replace_dir(&staged, dst)?;
    }
    filled
}

/// `.NAME.KIND-PID` beside `path`.
fn sibling(path: &Path, kind: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Makes a rename in `path`'s directory durable (best effort: not every platform can).
fn sync_parent(path: &Path) {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("lapidary-fsio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.json");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let (staged, dst) = (dir.join("staged"), dir.join("final"));
        for content in ["first", "second"] {
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::write(staged.join("x"), content).unwrap();
            replace_dir(&staged, &dst).unwrap();
            assert_eq!(std::fs::read_to_string(dst.join("x")).unwrap(), content);
            assert!(!staged.exists());
        }
        let names = || -> Vec<String> {
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names().len(), 2, "temporary files left behind: {:?}", names());
        // A directory written whole: a failing writer leaves the old one and no staging behind.
        let n = write_dir(&dst, |d| std::fs::write(d.join("y"), "third").map(|_| 3).map_err(|e| Error::io(d, e)));
        assert_eq!(n.unwrap(), 3);
        assert!(dst.join("y").exists() && !dst.join("x").exists());
        let failed = write_dir(&dst, |d| -> Result<()> {
            std::fs::write(d.join("z"), "partial").unwrap();
            Err(Error::invalid("writer failed"))
        });
        assert!(failed.is_err());
        assert!(dst.join("y").exists() && !dst.join("z").exists());
        assert_eq!(names().len(), 2, "staging left behind: {:?}", names());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
