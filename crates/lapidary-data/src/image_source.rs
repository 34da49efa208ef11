//! Where a row's image comes from: a file, or the bytes a parquet dataset embeds in a row (read
//! again from the parquet file when needed, so a dataset's images never have to fit in memory).
//! Not decoding (`image.rs`) nor the reading of whole datasets (`parquet_rows.rs`).

use lapidary_io::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where an image's encoded bytes (PNG, JPEG, …) are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// An image file.
    File(PathBuf),
    /// Bytes embedded in a parquet file's row.
    Embedded(EmbeddedImage),
}

/// An image embedded in a parquet file: an `Image()` feature's `bytes`, in a top-level column of
/// one image or of a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddedImage {
    /// The parquet file.
    pub file: Arc<Path>,
    /// The row in the file, from 0.
    pub row: usize,
    /// The top-level column.
    pub column: Arc<str>,
    /// The image's place in a list column (`None`: a column of one image).
    pub index: Option<usize>,
}

impl EmbeddedImage {
    /// The column and the place in it: `images[1]`, `image`.
    pub fn cell(&self) -> String {
        match self.index {
            Some(i) => format!("{}[{i}]", self.column),
            None => self.column.to_string(),
        }
    }
}

impl ImageSource {
    /// The encoded bytes: the file's, or the parquet row's read again.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            ImageSource::File(path) => std::fs::read(path).map_err(|e| Error::io(path, e)),
            ImageSource::Embedded(img) => crate::parquet_rows::read_embedded(img),
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::File(path) => write!(f, "{}", path.display()),
            ImageSource::Embedded(img) => write!(f, "{} row {} column {}", img.file.display(), img.row, img.cell()),
        }
    }
}

impl From<PathBuf> for ImageSource {
    fn from(path: PathBuf) -> Self {
        ImageSource::File(path)
    }
}
