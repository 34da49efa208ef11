//! Datasets: a JSONL file (one `{"messages": [...]}` conversation a line, image paths relative
//! to the file) or parquet files as HF `datasets` writes them (see `parquet_rows.rs`; which
//! files a path names: `data_files.rs`). Every row is parsed, tokenized and its images decoded
//! as it is read, so a bad row is found before training: it is an error naming the file and
//! line (or parquet row and column), or skipped and reported, by the user's choice — never
//! dropped silently. Parquet rows are streamed: what is kept of a row is its tokens and where
//! its images are (their pixels while [`crate::processor::PIXEL_CACHE_BYTES`] lasts). Not
//! batching or shuffling.

use crate::data_files::DataFiles;
use crate::image_source::ImageSource;
use crate::parquet_rows::{self, RowImage};
use crate::processor::{EncodeOptions, Example, Processor, ResolvedImage};
use crate::template::Conversation;
use lapidary_io::{Error, Result};
use std::path::{Path, PathBuf};

/// What to do with a row that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the file and line.
    #[default]
    Error,
    /// Skip it and list it in [`Dataset::skipped`].
    Skip,
}

/// Where a row is in its dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowAt {
    /// A JSONL line, from 1.
    Line(usize),
    /// A parquet row: the file (an index into [`Dataset::files`]) and the row in it, from 0.
    Row {
        /// Index into [`Dataset::files`].
        file: usize,
        /// The row in the file, from 0.
        row: usize,
    },
}

/// A row that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where it is.
    pub at: RowAt,
    /// What was wrong.
    pub reason: String,
}

/// An encoded dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The path it was loaded from (a file, a folder of shards or a pattern).
    pub path: PathBuf,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Encoded rows, in file order.
    pub examples: Vec<Example>,
    /// For each example, where it is.
    pub rows: Vec<RowAt>,
    /// Rows skipped under [`OnBadRow::Skip`].
    pub skipped: Vec<Skipped>,
}

impl Dataset {
    /// Reads and encodes the dataset `path` names: a JSONL file, a parquet file, a folder of
    /// parquet shards or a pattern (see `data_files.rs`).
    pub fn load(path: &Path, processor: &Processor, opts: &EncodeOptions, on_bad: OnBadRow) -> Result<Self> {
        let files = DataFiles::find(path)?;
        let mut ds = Dataset {
            path: path.to_path_buf(),
            files: files.paths(),
            examples: Vec::new(),
            rows: Vec::new(),
            skipped: Vec::new(),
        };
        match files {
            DataFiles::Jsonl(file) => ds.read_jsonl(&file, processor, opts, on_bad)?,
            DataFiles::Parquet(files) => {
                for (k, file) in files.iter().enumerate() {
                    ds.read_parquet(k, file, processor, opts, on_bad)?;
                }
            }
        }
        if ds.examples.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no usable row ({} skipped{})",
                path.display(),
                ds.skipped.len(),
                ds.skipped.first().map(|s| format!("; {}: {}", ds.at(s.at), s.reason)).unwrap_or_default()
            )));
        }
        Ok(ds)
    }

    /// Where a row is, as errors name it: `data.jsonl:3`, `train.parquet row 2`.
    pub fn at(&self, at: RowAt) -> String {
        match at {
            RowAt::Line(line) => format!("{}:{line}", self.path.display()),
            RowAt::Row { file, row } => format!("{} row {row}", self.files[file].display()),
        }
    }

    /// Keeps an encoded row, or deals with a bad one as `on_bad` says.
    fn take(&mut self, at: RowAt, row: std::result::Result<Example, String>, on_bad: OnBadRow) -> Result<()> {
        match row {
            Ok(ex) => {
                self.examples.push(ex);
                self.rows.push(at);
            }
            Err(reason) => match on_bad {
                OnBadRow::Error => return Err(Error::invalid(format!("{}: {reason}", self.at(at)))),
                OnBadRow::Skip => self.skipped.push(Skipped { at, reason }),
            },
        }
        Ok(())
    }

    /// JSONL: blank lines are ignored; a line that is not UTF-8 is a bad row like any other.
    fn read_jsonl(&mut self, path: &Path, processor: &Processor, opts: &EncodeOptions, on_bad: OnBadRow) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = std::str::from_utf8(raw).map_err(|e| {
                format!("not UTF-8 text (invalid byte at column {}); JSONL files are UTF-8", e.valid_up_to() + 1)
            });
            if line.as_ref().is_ok_and(|l| l.trim().is_empty()) {
                continue;
            }
            let row = line
                .and_then(|line| {
                    serde_json::from_str::<Conversation>(line)
                        .map_err(|e| format!("not a conversation ({{\"messages\": [...]}}): {e}"))
                })
                .and_then(|conv| processor.encode(&conv, base, opts));
            self.take(RowAt::Line(i + 1), row, on_bad)?;
        }
        Ok(())
    }

    /// One parquet file, streamed row by row; its images are decoded from the bytes in hand.
    fn read_parquet(
        &mut self,
        k: usize,
        path: &Path,
        processor: &Processor,
        opts: &EncodeOptions,
        on_bad: OnBadRow,
    ) -> Result<()> {
        let base = path.parent().unwrap_or(Path::new("."));
        parquet_rows::read_rows(path, &mut |row, parsed| {
            let encoded = parsed.and_then(|r| {
                let mut images = r.images.into_iter();
                let text_columns = r.text_columns;
                // What goes wrong with the text (a turn out of order, nothing to train on) is
                // named by its column; an image's error names its own.
                let in_text = |e: String| if e.starts_with("column") { e } else { format!("{text_columns}: {e}") };
                processor
                    .encode_with(&r.conversation, opts, &mut |part_path| {
                        if !part_path.is_empty() {
                            // A path the conversation names itself, relative to the parquet file.
                            let path = base.join(part_path);
                            return match path.is_file() {
                                true => Ok(ResolvedImage {
                                    label: path.display().to_string(),
                                    source: ImageSource::File(path),
                                    bytes: None,
                                }),
                                false => Err(format!("image {} not found", path.display())),
                            };
                        }
                        match images.next() {
                            Some(RowImage::Embedded { image, bytes }) => Ok(ResolvedImage {
                                label: format!("column {}", image.cell()),
                                source: ImageSource::Embedded(image),
                                bytes: Some(bytes),
                            }),
                            Some(RowImage::Path { cell, path }) => {
                                let file = base.join(&path);
                                if !file.is_file() {
                                    return Err(format!("column {cell}: image {} not found", file.display()));
                                }
                                Ok(ResolvedImage {
                                    label: format!("column {cell} ({})", file.display()),
                                    source: ImageSource::File(file),
                                    bytes: None,
                                })
                            }
                            None => Err("more image placeholders than images".into()),
                        }
                    })
                    .map_err(in_text)
            });
            self.take(RowAt::Row { file: k, row }, encoded, on_bad)
        })?;
        Ok(())
    }

    /// Number of encoded rows.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// A printable summary of the skipped rows (empty when none).
    pub fn skipped_report(&self) -> String {
        self.skipped.iter().map(|s| format!("{}: skipped: {}\n", self.at(s.at), s.reason)).collect()
    }

    /// The rows cut to `max_len` as `(where, tokens before the cut)`, in file order.
    pub fn cut_rows(&self) -> Vec<(RowAt, usize)> {
        self.examples.iter().zip(&self.rows).filter_map(|(ex, &at)| Some((at, ex.cut_from?))).collect()
    }

    /// A printable line on the rows cut to `max_len` (empty when none): how many, the longest,
    /// the first lines.
    pub fn cut_report(&self, max_len: usize) -> String {
        let cut = self.cut_rows();
        if cut.is_empty() {
            return String::new();
        }
        let longest = cut.iter().map(|c| c.1).max().unwrap_or(0);
        let shown: Vec<String> = cut
            .iter()
            .take(5)
            .map(|c| match c.0 {
                RowAt::Line(line) => line.to_string(),
                RowAt::Row { file, row } => format!("{row} of {}", file_name(&self.files[file])),
            })
            .collect();
        let what = if matches!(cut[0].0, RowAt::Line(_)) { "line" } else { "row" };
        format!(
            "{}: {} of {} rows longer than max_len {max_len} were cut at the end (longest {longest} tokens; \
             {what}{} {}{}); raise --max-len to keep them whole\n",
            self.path.display(),
            cut.len(),
            self.examples.len(),
            if cut.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if cut.len() > shown.len() { ", ..." } else { "" },
        )
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
