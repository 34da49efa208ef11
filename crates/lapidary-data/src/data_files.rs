//! Which files a dataset path names: a JSONL file; a parquet file; a folder of parquet shards
//! (or a Hub dataset folder with them under `data/`); or a `*` pattern in the file name
//! (`data/train-*.parquet`). Shards named as `push_to_hub` names them
//! (`<split>-<i>-of-<n>.parquet`) are checked to be complete, and a folder holding several splits
//! must be narrowed to one. Not reading them (`dataset.rs`, `parquet_rows.rs`).

use lapidary_io::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataFiles {
    /// One JSONL file.
    Jsonl(PathBuf),
    /// Parquet files, read in this order.
    Parquet(Vec<PathBuf>),
}

impl DataFiles {
    /// The files `path` names (see the module's documentation).
    pub fn find(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains('*') {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let files: Vec<PathBuf> = list(dir)?.into_iter().filter(|f| matches(&name, &file_name(f))).collect();
            if files.is_empty() {
                return Err(Error::invalid(format!("{}: no file matches", path.display())));
            }
            if let Some(other) = files.iter().find(|f| !is_parquet_name(f)) {
                return Err(Error::invalid(format!(
                    "{}: a pattern may name parquet files only, and it matches {}",
                    path.display(),
                    other.display()
                )));
            }
            check_shards(path, &files, false)?;
            return Ok(DataFiles::Parquet(files));
        }
        if path.is_dir() {
            let mut files: Vec<PathBuf> = list(path)?.into_iter().filter(|f| is_parquet_name(f)).collect();
            if files.is_empty() && path.join("data").is_dir() {
                files = list(&path.join("data"))?.into_iter().filter(|f| is_parquet_name(f)).collect();
            }
            if files.is_empty() {
                return Err(Error::invalid(format!(
                    "{}: a folder without .parquet files (nor in its data/ folder); give a JSONL or parquet file",
                    path.display()
                )));
            }
            check_shards(path, &files, true)?;
            return Ok(DataFiles::Parquet(files));
        }
        if is_parquet_name(path) || starts_with_parquet_magic(path) {
            return Ok(DataFiles::Parquet(vec![path.to_path_buf()]));
        }
        Ok(DataFiles::Jsonl(path.to_path_buf()))
    }

    /// The files, in reading order.
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            DataFiles::Jsonl(p) => vec![p.clone()],
            DataFiles::Parquet(files) => files.clone(),
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn is_parquet_name(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn starts_with_parquet_magic(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"PAR1"
}

/// The files directly in `dir`, sorted by name.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// `(split, i, n)` of a shard named `<split>-<i>-of-<n>.parquet`.
fn shard(p: &Path) -> Option<(String, usize, usize)> {
    let stem = file_name(p).strip_suffix(".parquet")?.to_string();
    let (head, n) = stem.rsplit_once("-of-")?;
    let (split, i) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(n) {
        return None;
    }
    Some((split.to_string(), i.parse().ok()?, n.parse().ok()?))
}

/// Shards must be complete; a folder (`one_split`) must hold one split.
fn check_shards(path: &Path, files: &[PathBuf], one_split: bool) -> Result<()> {
    let mut splits: BTreeMap<String, (usize, Vec<usize>)> = BTreeMap::new();
    for f in files {
        if let Some((split, i, n)) = shard(f) {
            let entry = splits.entry(split.clone()).or_insert((n, Vec::new()));
            if entry.0 != n {
                return Err(Error::invalid(format!(
                    "{}: the {split} shards disagree on their count ({} and {n})",
                    path.display(),
                    entry.0
                )));
            }
            entry.1.push(i);
        }
    }
    if one_split && splits.len() > 1 {
        let names: Vec<&str> = splits.keys().map(String::as_str).collect();
        return Err(Error::invalid(format!(
            "{}: holds the splits {}; name one with a pattern, e.g. {}",
            path.display(),
            names.join(", "),
            path.join(format!("{}-*.parquet", names.iter().find(|&&s| s == "train").unwrap_or(&names[0]))).display()
        )));
    }
    for (split, (n, have)) in &splits {
        if let Some(missing) = (0..*n).find(|i| !have.contains(i)) {
            return Err(Error::invalid(format!(
                "{}: shard {missing} of the {n} of split {split} is missing ({split}-{missing:05}-of-{n:05}.parquet)",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(matches("train-*.parquet", "train-00000-of-00002.parquet"));
        assert!(!matches("train-*.parquet", "test-00000-of-00001.parquet"));
        assert!(matches("*", "x"));
        assert!(matches("a*b*c", "aXbYc") && !matches("a*b*c", "aXcYb"));
        assert!(!matches("ab*ba", "aba"), "the prefix and suffix may not overlap");
    }

    #[test]
    fn shard_names_are_read_and_others_are_not_shards() {
        assert_eq!(shard(Path::new("d/train-00001-of-00002.parquet")), Some(("train".into(), 1, 2)));
        assert_eq!(shard(Path::new("my-data-0-of-1.parquet")), Some(("my-data".into(), 0, 1)));
        assert_eq!(shard(Path::new("data.parquet")), None);
        assert_eq!(shard(Path::new("train-x-of-2.parquet")), None);
    }

    #[test]
    fn folders_patterns_and_files_name_their_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "test-00000-of-00001.parquet"] {
            std::fs::write(d.join(f), b"PAR1").unwrap();
        }
        let err = DataFiles::find(d).unwrap_err().to_string();
        assert!(err.contains("splits test, train") && err.contains("train-*.parquet"), "{err}");
        let train = DataFiles::find(&d.join("train-*.parquet")).unwrap();
        assert_eq!(train.paths(), [d.join("train-00000-of-00002.parquet"), d.join("train-00001-of-00002.parquet")]);
        assert_eq!(DataFiles::find(&d.join("test-*")).unwrap().paths(), [d.join("test-00000-of-00001.parquet")]);
        // A missing shard is named.
        std::fs::remove_file(d.join("train-00001-of-00002.parquet")).unwrap();
        let err = DataFiles::find(&d.join("train-*.parquet")).unwrap_err().to_string();
        assert!(err.contains("train-00001-of-00002.parquet") && err.contains("missing"), "{err}");
        // A Hub folder: shards under data/.
        let hub = d.join("hub");
        std::fs::create_dir_all(hub.join("data")).unwrap();
        std::fs::write(hub.join("data/train-00000-of-00001.parquet"), b"PAR1").unwrap();
        std::fs::write(hub.join("README.md"), b"# card").unwrap();
        assert_eq!(DataFiles::find(&hub).unwrap().paths(), [hub.join("data/train-00000-of-00001.parquet")]);
        // A file: parquet by name or by its magic bytes, else JSONL.
        std::fs::write(d.join("rows.bin"), b"PAR1....").unwrap();
        std::fs::write(d.join("rows.jsonl"), b"{}").unwrap();
        assert_eq!(DataFiles::find(&d.join("rows.bin")).unwrap(), DataFiles::Parquet(vec![d.join("rows.bin")]));
        assert_eq!(DataFiles::find(&d.join("rows.jsonl")).unwrap(), DataFiles::Jsonl(d.join("rows.jsonl")));
        assert!(DataFiles::find(&d.join("nothing-*.parquet")).unwrap_err().to_string().contains("no file matches"));
        let empty = d.join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(DataFiles::find(&empty).unwrap_err().to_string().contains("without .parquet files"));
    }
}
