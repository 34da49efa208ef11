//! Parquet datasets written by HF `datasets` (tests/fixtures/parquet, from
//! tools/reference/make_parquet_fixtures.py) against the same rows as JSONL
//! (tests/fixtures/processor/data.jsonl): identical tokens, labels and pixels, bad rows named by
//! file, row and column, images read again from the file when their pixels are not kept.

use lapidary_data::{Dataset, EncodeOptions, ImageSource, OnBadRow, Processor, RowAt};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/parquet").join(name)
}

fn processor() -> Processor {
    Processor::from_model_dir(&root().join("assets/tiny-vlm")).unwrap()
}

fn load(p: &Processor, path: &Path) -> Dataset {
    Dataset::load(path, p, &EncodeOptions::default(), OnBadRow::Error).unwrap()
}

fn jsonl(p: &Processor) -> Dataset {
    load(p, &root().join("tests/fixtures/processor/data.jsonl"))
}

/// Row `i` of `got` encodes as `want`'s row `rows[i]`, pixels included.
fn assert_same_rows(p: &Processor, got: &Dataset, want: &Dataset, rows: &[usize]) {
    assert!(got.len() >= rows.len(), "{}", got.path.display());
    for (g, &w) in got.examples.iter().zip(rows) {
        let w_ex = &want.examples[w];
        assert_eq!(g.input_ids, w_ex.input_ids, "{} row for line {}", got.path.display(), w + 1);
        assert_eq!(g.labels, w_ex.labels);
        assert_eq!(g.token_type_ids, w_ex.token_type_ids);
        assert_eq!(g.cut_from, w_ex.cut_from);
        assert_eq!(g.images.len(), w_ex.images.len());
        for (a, b) in g.images.iter().zip(&w_ex.images) {
            assert_eq!(*p.image_from(a).unwrap(), *p.image_from(b).unwrap(), "{a} vs {b}");
        }
    }
}

#[test]
fn parquet_rows_encode_as_the_same_jsonl_rows() {
    let p = processor();
    let want = jsonl(&p);
    assert_eq!(want.len(), 5);
    let all = [0, 1, 2, 3, 4];
    for name in ["messages-images.parquet", "messages-images-snappy.parquet", "messages-images-zstd.parquet"] {
        let got = load(&p, &fixture(name));
        assert_eq!(got.len(), 5);
        assert_same_rows(&p, &got, &want, &all);
        // Embedded images are named by their file, row and column.
        assert!(
            matches!(&got.examples[2].images[1], ImageSource::Embedded(e) if e.row == 2 && e.cell() == "images[1]")
        );
        assert_eq!(got.rows[4], RowAt::Row { file: 0, row: 4 });
    }
    // Images given by a path relative to the parquet file.
    let by_path = load(&p, &fixture("by-path.parquet"));
    assert_same_rows(&p, &by_path, &want, &all);
    assert!(matches!(&by_path.examples[0].images[0], ImageSource::File(f) if f.ends_with("noise_rgba.png")));
    // Shards, by a pattern, read in order as one dataset.
    let shards = load(&p, &fixture("shards/train-*.parquet"));
    assert_same_rows(&p, &shards, &want, &all);
    assert_eq!(shards.files.len(), 2);
    assert_eq!(shards.rows[3], RowAt::Row { file: 1, row: 0 });
    assert!(shards.at(shards.rows[3]).ends_with("train-00001-of-00002.parquet row 0"));
    // A folder holding two splits must be narrowed to one.
    let err = Dataset::load(&fixture("shards"), &p, &EncodeOptions::default(), OnBadRow::Error).unwrap_err();
    assert!(err.to_string().contains("splits test, train"), "{err}");
    // One image column, null where a row has none.
    let single = load(&p, &fixture("image-column.parquet"));
    assert_eq!(single.len(), 4);
    assert_same_rows(&p, &single, &want, &[0, 1, 3, 4]);
}

#[test]
fn gemma4_patches_from_parquet_rows_equal_those_from_files() {
    let p = Processor::gemma4_from_model_dir(&root().join("tests/fixtures/tiny-gemma4-e/model")).unwrap();
    let want = jsonl(&p);
    let got = load(&p, &fixture("messages-images-zstd.parquet"));
    assert_eq!(got.len(), 5);
    assert_same_rows(&p, &got, &want, &[0, 1, 2, 3, 4]);
    assert!(p.image_from(&got.examples[0].images[0]).unwrap().positions.is_some(), "Gemma 4 patches");
}

#[test]
fn a_prompt_completion_row_trains_on_its_completion_only() {
    let p = processor();
    let want = jsonl(&p);
    let got = load(&p, &fixture("prompt-completion.parquet"));
    assert_eq!(got.len(), 5);
    // Rows with one answer encode exactly as their conversation.
    assert_same_rows(&p, &got, &want, &[0, 1, 2]);
    // Line 4 answers twice: the first answer is part of the prompt, context only.
    for k in [3, 4] {
        let (g, w) = (&got.examples[k], &want.examples[k]);
        assert_eq!(g.input_ids, w.input_ids);
        let trained = |labels: &[i64]| labels.iter().filter(|&&l| l != -100).count();
        if k == 3 {
            let first_answer = p.tokenizer.encode("Noise.<end_of_turn>\n", false).unwrap().ids.len();
            assert_eq!(trained(&g.labels), trained(&w.labels) - first_answer);
            let diff: Vec<usize> = (0..g.labels.len()).filter(|&i| g.labels[i] != w.labels[i]).collect();
            assert_eq!(diff.len(), first_answer);
            assert!(diff.iter().all(|&i| g.labels[i] == -100 && w.labels[i] == w.input_ids[i] as i64));
        } else {
            assert_eq!(g.labels, w.labels);
        }
    }
    // Without responses-only every token is trained on, as in the conversation.
    let all = EncodeOptions { responses_only: false, ..Default::default() };
    let g = Dataset::load(&fixture("prompt-completion.parquet"), &p, &all, OnBadRow::Error).unwrap();
    let w = Dataset::load(&root().join("tests/fixtures/processor/data.jsonl"), &p, &all, OnBadRow::Error).unwrap();
    assert_eq!(g.examples[3].labels, w.examples[3].labels);
}

#[test]
fn plain_string_prompts_take_their_images_at_the_start_of_the_user_turn() {
    let p = processor();
    let got = load(&p, &fixture("strings.parquet"));
    let dir = root().join("tests/fixtures/processor");
    let row = r#"{"messages":[{"role":"user","content":[{"type":"image","path":"images/gradient_grey.jpg"},
        {"type":"image","path":"images/small.webp"},{"type":"text","text":"Compare with"}]},
        {"role":"assistant","content":"The first is grey."}]}"#;
    let conv = serde_json::from_str(row).unwrap();
    let want = p.encode(&conv, &dir, &EncodeOptions::default()).unwrap();
    assert_eq!(got.examples[2].input_ids, want.input_ids);
    assert_eq!(got.examples[2].labels, want.labels);
    assert_eq!(p.image_from(&got.examples[2].images[1]).unwrap().values, p.image_from(&want.images[1]).unwrap().values);
    // A text-only row stays text-only.
    assert_eq!(got.examples[1].images.len(), 0);
}

#[test]
fn bad_rows_name_the_file_the_row_and_the_column_or_are_skipped() {
    let p = processor();
    let path = fixture("bad-rows.parquet");
    let err = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Error).unwrap_err().to_string();
    assert!(
        err.contains("bad-rows.parquet row 1: column images[0]: cannot decode the image"),
        "the undecodable image: {err}"
    );
    let ds = Dataset::load(&path, &p, &EncodeOptions::default(), OnBadRow::Skip).unwrap();
    assert_eq!(ds.rows, [RowAt::Row { file: 0, row: 0 }, RowAt::Row { file: 0, row: 3 }]);
    let skipped: Vec<(RowAt, &str)> = ds.skipped.iter().map(|s| (s.at, s.reason.as_str())).collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped[1].1.contains("2 image placeholder(s)") && skipped[1].1.contains("column images holds 1"));
    assert!(skipped[2].1.contains("column messages is null"), "{skipped:?}");
    // What is wrong with the text is named by its column.
    assert!(skipped[3].1.starts_with("column messages: turn 1: a user turn where"), "{skipped:?}");
    let report = ds.skipped_report();
    assert!(report.contains("bad-rows.parquet row 4: skipped: column messages is null"), "{report}");
}

#[test]
fn embedded_images_are_read_again_from_their_file() {
    let p = processor();
    let ds = load(&p, &fixture("messages-images.parquet"));
    let want = jsonl(&p);
    // A second processor keeps no pixels: every image is read from the parquet file again (rows
    // in the second and third row groups too) and decodes to the same pixels as its file.
    let fresh = processor();
    for (k, ex) in ds.examples.iter().enumerate() {
        for (i, source) in ex.images.iter().enumerate() {
            let ImageSource::Embedded(_) = source else { panic!("{source} is not embedded") };
            let ImageSource::File(file) = &want.examples[k].images[i] else { unreachable!() };
            assert_eq!(source.bytes().unwrap(), std::fs::read(file).unwrap(), "{source}");
            assert_eq!(fresh.image_from(source).unwrap().values, fresh.image(file).unwrap().values);
        }
    }
}

#[test]
fn files_that_are_not_datasets_are_errors_naming_them() {
    let p = processor();
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("messages-images.parquet")).unwrap();
    // Cut short: the footer is gone.
    let cut = tmp.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Dataset::load(&cut, &p, &EncodeOptions::default(), OnBadRow::Skip).unwrap_err().to_string();
    assert!(err.contains("cut.parquet: cannot be read as parquet"), "{err}");
    // Pages overwritten with noise, the footer intact.
    let mut noisy = bytes.clone();
    let mut x = 0x9E37_79B9u32;
    for b in &mut noisy[4..bytes.len() / 2] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let noisy_path = tmp.path().join("noisy.parquet");
    std::fs::write(&noisy_path, &noisy).unwrap();
    match Dataset::load(&noisy_path, &p, &EncodeOptions::default(), OnBadRow::Skip) {
        Err(e) => assert!(e.to_string().contains("noisy.parquet"), "{e}"),
        Ok(ds) => panic!("noise read as {} rows", ds.len()),
    }
    // A parquet file without the columns a dataset needs.
    let err = Dataset::load(&fixture("captions.parquet"), &p, &EncodeOptions::default(), OnBadRow::Error).unwrap_err();
    assert!(
        err.to_string().contains("captions.parquet: no `messages` column")
            && err.to_string().contains("image, caption"),
        "{err}"
    );
}
