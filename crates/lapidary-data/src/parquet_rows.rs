//! Parquet datasets as HF `datasets` writes them (and the Hub serves them): rows read one at a
//! time in file order, only the columns used, each turned into a conversation and its images.
//!
//! The text is a `messages` column (TRL's conversational form) or `prompt` and `completion`
//! columns: two conversations (the prompt's answers are context, only the completion is trained
//! on), or two plain strings (one user turn and one assistant turn). Images are an `images`
//! column (a list of `Image()`) or an `image` column (one `Image()`, null for none): each
//! `{bytes, path}`, the bytes embedded or a path relative to the parquet file's folder. A
//! `{"type": "image"}` part takes the row's next image; a conversation without any image part
//! gets its images at the start of its first user turn (as TRL's `prepare_multimodal_messages`
//! places them). Not encoding (`processor.rs`) nor the choice of files (`dataset.rs`).

use crate::image_source::EmbeddedImage;
use crate::template::{Content, Conversation, Message, Part};
use lapidary_io::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::TreeBuilder;
use parquet::record::{Field, Row};
use parquet::schema::types::{SchemaDescriptor, Type};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Values decoded at a time from each column: bounds what one row group's images hold in memory.
const VALUES_PER_BATCH: usize = 16;

/// Open parquet files kept for reading embedded images again (at most this many).
const OPEN_FILES: usize = 64;

/// One row of a parquet dataset.
#[derive(Clone, Debug)]
pub struct ParquetRow {
    /// The conversation, image parts as placeholders (or paths it names itself).
    pub conversation: Conversation,
    /// The columns it was read from, as errors about it name them: `column messages`,
    /// `columns prompt and completion`.
    pub text_columns: &'static str,
    /// The row's images, in the order its image placeholders take them.
    pub images: Vec<RowImage>,
}

/// One image of a parquet row.
#[derive(Clone, Debug)]
pub enum RowImage {
    /// Embedded bytes.
    Embedded {
        /// Where they are.
        image: EmbeddedImage,
        /// The encoded image.
        bytes: Vec<u8>,
    },
    /// A path, relative to the parquet file's folder.
    Path {
        /// The column and place (`images[0]`).
        cell: String,
        /// The path as stored.
        path: String,
    },
}

/// Where a layout takes the text from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextColumns {
    Messages,
    PromptCompletion,
}

/// The columns a file's rows are read from.
struct Layout {
    text: TextColumns,
    images: Option<String>,
    projection: Arc<SchemaDescriptor>,
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: cannot be read as parquet: {e}", path.display()))
}

/// Runs a call into the parquet reader, a panic in it (a malformed file) turned into an error
/// naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> parquet::errors::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| corrupt(path, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the reader failed");
            Err(corrupt(path, msg))
        }
    }
}

fn open(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    guarded(path, || SerializedFileReader::new(file))
}

/// The columns of `schema` a dataset is read from, or an error naming the file and the columns
/// it has.
fn layout(path: &Path, schema: &Type) -> Result<Layout> {
    let fields = schema.get_fields();
    let find = |name: &str| fields.iter().find(|f| f.name() == name);
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    let (text, mut keep) = if let Some(m) = find("messages") {
        (TextColumns::Messages, vec![m.clone()])
    } else if let (Some(p), Some(c)) = (find("prompt"), find("completion")) {
        (TextColumns::PromptCompletion, vec![p.clone(), c.clone()])
    } else {
        return Err(Error::invalid(format!(
            "{}: no `messages` column, nor `prompt` and `completion` columns (its columns: {})",
            path.display(),
            names.join(", ")
        )));
    };
    let images = match (find("images"), find("image")) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "{}: both an `images` and an `image` column; keep one of them",
                path.display()
            )));
        }
        (Some(f), None) | (None, Some(f)) => {
            keep.push(f.clone());
            Some(f.name().to_string())
        }
        (None, None) => None,
    };
    let projection = Type::group_type_builder(schema.name()).with_fields(keep).build().map_err(|e| corrupt(path, e))?;
    Ok(Layout { text, images, projection: Arc::new(SchemaDescriptor::new(Arc::new(projection))) })
}

/// Reads `path` row by row in file order: `each(row, …)` gets the row's number (from 0) and the
/// row, or what is wrong with it. An error of its own stops the reading and is returned. A file
/// that cannot be read (missing columns, a corrupt page) is an error naming it.
pub fn read_rows(
    path: &Path,
    each: &mut dyn FnMut(usize, std::result::Result<ParquetRow, String>) -> Result<()>,
) -> Result<usize> {
    let reader = open(path)?;
    let layout = layout(path, reader.metadata().file_metadata().schema())?;
    let file: Arc<Path> = path.into();
    let mut row = 0;
    for g in 0..reader.num_row_groups() {
        let group = guarded(path, || reader.get_row_group(g))?;
        let mut rows = guarded(path, || {
            TreeBuilder::new().with_batch_size(VALUES_PER_BATCH).as_iter(layout.projection.clone(), &*group)
        })?;
        while let Some(r) = guarded(path, || rows.next().transpose())? {
            each(row, parse_row(&layout, &file, row, &r))?;
            row += 1;
        }
    }
    Ok(row)
}

fn column<'a>(row: &'a Row, name: &str) -> &'a Field {
    row.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f).unwrap_or(&Field::Null)
}

fn parse_row(layout: &Layout, file: &Arc<Path>, row: usize, r: &Row) -> std::result::Result<ParquetRow, String> {
    let mut conversation = match layout.text {
        TextColumns::Messages => Conversation::new(messages(column(r, "messages"), "messages")?),
        TextColumns::PromptCompletion => prompt_completion(column(r, "prompt"), column(r, "completion"))?,
    };
    let images = match &layout.images {
        Some(name) => row_images(column(r, name), file, row, name)?,
        None => Vec::new(),
    };
    place_images(&mut conversation, images.len(), layout.images.as_deref().unwrap_or("images"))?;
    let text_columns = match layout.text {
        TextColumns::Messages => "column messages",
        TextColumns::PromptCompletion => "columns prompt and completion",
    };
    Ok(ParquetRow { conversation, text_columns, images })
}

/// A parquet value as JSON: groups as objects (null members left out), lists as arrays.
fn json(f: &Field, at: &str) -> std::result::Result<Value, String> {
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Str(s) => Value::String(s.clone()),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => Value::from(*x as f64),
        Field::Double(x) => Value::from(*x),
        Field::Group(row) => {
            let mut obj = serde_json::Map::new();
            for (name, value) in row.get_column_iter() {
                let v = json(value, &format!("{at}.{name}"))?;
                if !v.is_null() {
                    obj.insert(name.clone(), v);
                }
            }
            Value::Object(obj)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, e)| json(e, &format!("{at}[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Field::Bytes(_) => return Err(format!("column {at}: binary data where text belongs")),
        other => return Err(format!("column {at}: a {} value where text belongs", kind(other))),
    })
}

fn kind(f: &Field) -> &'static str {
    match f {
        Field::MapInternal(_) => "map",
        Field::Decimal(_) => "decimal",
        Field::Date(_) | Field::TimeMillis(_) | Field::TimeMicros(_) => "date or time",
        Field::TimestampMillis(_) | Field::TimestampMicros(_) => "timestamp",
        _ => "non-text",
    }
}

/// A column holding a list of messages.
fn messages(f: &Field, name: &str) -> std::result::Result<Vec<Message>, String> {
    if matches!(f, Field::Null) {
        return Err(format!("column {name} is null; expected a list of messages"));
    }
    serde_json::from_value(json(f, name)?)
        .map_err(|e| format!("column {name}: not a list of messages ({{\"role\": ..., \"content\": ...}}): {e}"))
}

/// The conversation of a prompt/completion row: two lists of messages, or two strings.
fn prompt_completion(prompt: &Field, completion: &Field) -> std::result::Result<Conversation, String> {
    match (prompt, completion) {
        (Field::Str(p), Field::Str(c)) => Ok(Conversation {
            messages: vec![
                Message { role: "user".into(), content: Content::Text(p.clone()) },
                Message { role: "assistant".into(), content: Content::Text(c.clone()) },
            ],
            trained_from: 1,
        }),
        (Field::ListInternal(_), Field::ListInternal(_)) => {
            let mut all = messages(prompt, "prompt")?;
            let trained_from = all.len();
            all.extend(messages(completion, "completion")?);
            Ok(Conversation { messages: all, trained_from })
        }
        (Field::Null, _) => Err("column prompt is null".into()),
        (_, Field::Null) => Err("column completion is null".into()),
        _ => Err("columns prompt and completion: expected two strings or two lists of messages".into()),
    }
}

/// The images of a row's image column: a list of images, one image, or null (none).
fn row_images(f: &Field, file: &Arc<Path>, row: usize, name: &str) -> std::result::Result<Vec<RowImage>, String> {
    let at = |index| EmbeddedImage { file: file.clone(), row, column: name.into(), index };
    match f {
        Field::Null => Ok(Vec::new()),
        Field::ListInternal(list) => {
            list.elements().iter().enumerate().map(|(i, e)| one_image(e, at(Some(i)))).collect()
        }
        other => Ok(vec![one_image(other, at(None))?]),
    }
}

/// One `Image()` value: `{bytes, path}` (bytes first), or plain bytes, or a plain path.
fn one_image(f: &Field, image: EmbeddedImage) -> std::result::Result<RowImage, String> {
    let cell = image.cell();
    let (bytes, path) = match f {
        Field::Group(g) => (column(g, "bytes"), column(g, "path")),
        Field::Bytes(_) | Field::Str(_) => (f, f),
        Field::Null => return Err(format!("column {cell} is null; expected an image")),
        other => return Err(format!("column {cell}: a {} value where an image belongs", kind(other))),
    };
    match (bytes, path) {
        (Field::Bytes(b), _) => Ok(RowImage::Embedded { image, bytes: b.data().to_vec() }),
        (_, Field::Str(p)) if !p.is_empty() => Ok(RowImage::Path { cell, path: p.clone() }),
        _ => Err(format!("column {cell}: neither image bytes nor a path")),
    }
}

/// Matches the row's `n` images with the conversation's image parts: placeholders take them in
/// order; a conversation without any image part gets `n` placeholders at the start of its first
/// user turn. A count that does not match is an error.
fn place_images(conv: &mut Conversation, n: usize, column: &str) -> std::result::Result<(), String> {
    let image_paths = || {
        conv.messages.iter().flat_map(|m| match &m.content {
            Content::Parts(p) => {
                p.iter().filter_map(|p| if let Part::Image { path } = p { Some(path) } else { None }).collect()
            }
            Content::Text(_) => Vec::new(),
        })
    };
    let placeholders = image_paths().filter(|p| p.is_empty()).count();
    let any = image_paths().next().is_some();
    if !any && n > 0 {
        let Some(user) = conv.messages.iter_mut().find(|m| m.role == "user") else {
            return Err(format!("column {column} holds {n} image(s) but the conversation has no user turn"));
        };
        let mut with = vec![Part::Image { path: String::new() }; n];
        match std::mem::replace(&mut user.content, Content::Text(String::new())) {
            Content::Text(t) => with.push(Part::Text { text: t }),
            Content::Parts(p) => with.extend(p),
        }
        user.content = Content::Parts(with);
        return Ok(());
    }
    if placeholders != n {
        return Err(format!(
            "the conversation has {placeholders} image placeholder(s) ({{\"type\": \"image\"}}) but column {column} \
             holds {n} image(s)"
        ));
    }
    Ok(())
}

/// Open files for [`read_embedded`], by path.
fn open_files() -> &'static Mutex<HashMap<PathBuf, Arc<SerializedFileReader<File>>>> {
    static FILES: OnceLock<Mutex<HashMap<PathBuf, Arc<SerializedFileReader<File>>>>> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// The bytes of an embedded image, read again from its parquet file (the row group holding it,
/// its column only).
pub fn read_embedded(img: &EmbeddedImage) -> Result<Vec<u8>> {
    let path: &Path = &img.file;
    let reader = {
        let mut files = open_files().lock().unwrap_or_else(|p| p.into_inner());
        match files.get(path) {
            Some(r) => r.clone(),
            None => {
                if files.len() >= OPEN_FILES {
                    files.clear();
                }
                let r = Arc::new(open(path)?);
                files.insert(path.to_path_buf(), r.clone());
                r
            }
        }
    };
    let gone = |what: String| Error::invalid(format!("{}: {what}", crate::ImageSource::Embedded(img.clone())));
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema();
    let field = schema
        .get_fields()
        .iter()
        .find(|f| f.name() == &*img.column)
        .ok_or_else(|| gone(format!("the file has no column {} (changed since it was read?)", img.column)))?;
    let projection = Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| corrupt(path, e))?;
    let descr = Arc::new(SchemaDescriptor::new(Arc::new(projection)));
    let mut first = 0;
    for g in 0..reader.num_row_groups() {
        let rows = meta.row_group(g).num_rows() as usize;
        if img.row >= first + rows {
            first += rows;
            continue;
        }
        let group = guarded(path, || reader.get_row_group(g))?;
        let mut iter = guarded(path, || TreeBuilder::new().with_batch_size(VALUES_PER_BATCH).as_iter(descr, &*group))?;
        for _ in first..img.row {
            guarded(path, || iter.next().transpose())?;
        }
        let row = guarded(path, || iter.next().transpose())?.ok_or_else(|| gone("the row is missing".into()))?;
        let images = row_images(column(&row, &img.column), &img.file, img.row, &img.column).map_err(gone)?;
        let found = match img.index {
            Some(i) => images.into_iter().nth(i),
            None => images.into_iter().next(),
        };
        return match found {
            Some(RowImage::Embedded { bytes, .. }) => Ok(bytes),
            _ => Err(gone("no embedded image there (the file changed since it was read?)".into())),
        };
    }
    Err(gone(format!("the file has {first} rows (changed since it was read?)")))
}
