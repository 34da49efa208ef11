//! JSONL datasets: one conversation a line (`{"messages": [...]}`), image paths relative to the
//! file. Every row is parsed, tokenized and its images decoded up front, so a bad row is found
//! before training: it is an error naming the file and line, or skipped and reported, by the
//! user's choice — never dropped silently. Not batching or shuffling.

use crate::processor::{EncodeOptions, Example, Processor};
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

/// A row that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// An encoded dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The JSONL file.
    pub path: PathBuf,
    /// Encoded rows, in file order.
    pub examples: Vec<Example>,
    /// For each example, its 1-based line in the file.
    pub lines: Vec<usize>,
    /// Rows skipped under [`OnBadRow::Skip`].
    pub skipped: Vec<Skipped>,
}

impl Dataset {
    /// Reads and encodes a JSONL file. Blank lines are ignored; a line that is not UTF-8 is a
    /// bad row like any other (an error naming its line, or skipped).
    pub fn load(path: &Path, processor: &Processor, opts: &EncodeOptions, on_bad: OnBadRow) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut ds = Dataset { path: path.to_path_buf(), examples: Vec::new(), lines: Vec::new(), skipped: Vec::new() };
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
            match row {
                Ok(ex) => {
                    ds.examples.push(ex);
                    ds.lines.push(i + 1);
                }
                Err(reason) => match on_bad {
                    OnBadRow::Error => {
                        return Err(Error::invalid(format!("{}:{}: {reason}", path.display(), i + 1)));
                    }
                    OnBadRow::Skip => ds.skipped.push(Skipped { line: i + 1, reason }),
                },
            }
        }
        if ds.examples.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no usable row ({} skipped{})",
                path.display(),
                ds.skipped.len(),
                ds.skipped.first().map(|s| format!("; line {}: {}", s.line, s.reason)).unwrap_or_default()
            )));
        }
        Ok(ds)
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
        self.skipped.iter().map(|s| format!("{}:{}: skipped: {}\n", self.path.display(), s.line, s.reason)).collect()
    }

    /// The rows cut to `max_len` as `(line, tokens before the cut)`, in file order.
    pub fn cut_rows(&self) -> Vec<(usize, usize)> {
        self.examples.iter().zip(&self.lines).filter_map(|(ex, &line)| Some((line, ex.cut_from?))).collect()
    }

    /// A printable line on the rows cut to `max_len` (empty when none): how many, the longest,
    /// the first lines.
    pub fn cut_report(&self, max_len: usize) -> String {
        let cut = self.cut_rows();
        if cut.is_empty() {
            return String::new();
        }
        let longest = cut.iter().map(|c| c.1).max().unwrap_or(0);
        let lines: Vec<String> = cut.iter().take(5).map(|c| c.0.to_string()).collect();
        format!(
            "{}: {} of {} rows longer than max_len {max_len} were cut at the end (longest {longest} tokens; \
             line{} {}{}); raise --max-len to keep them whole\n",
            self.path.display(),
            cut.len(),
            self.examples.len(),
            if cut.len() == 1 { "" } else { "s" },
            lines.join(", "),
            if cut.len() > lines.len() { ", ..." } else { "" },
        )
    }
}
