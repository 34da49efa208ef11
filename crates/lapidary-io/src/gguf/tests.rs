//! The GGUF parser on hand-built files: a valid one, every kind of malformed header field, and
//! randomized truncations and byte flips of the valid one (an `Err`, never a panic).

use super::*;
use proptest::prelude::*;

/// Writes GGUF bytes: metadata entries as (key, type id, encoded value), then tensors.
struct Writer {
    meta: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    align: usize,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn array(item: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut b = item.to_le_bytes().to_vec();
    b.extend((items.len() as u64).to_le_bytes());
    items.iter().for_each(|i| b.extend(i));
    b
}

impl Writer {
    fn valid() -> Self {
        let f32s: Vec<u8> = (0..32).flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes()).collect();
        // Q8_0: per block an f16 scale and 32 int8 codes.
        let mut q8 = Vec::new();
        for b in 0..2 {
            q8.extend(half::f16::from_f32(0.5 + b as f32).to_le_bytes());
            q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        }
        Writer {
            meta: vec![
                ("general.architecture".into(), 8, string("gemma3")),
                ("gemma3.block_count".into(), 4, 2u32.to_le_bytes().to_vec()),
                ("x.scores".into(), 9, array(6, &[1.5f32.to_le_bytes().to_vec(), (-2f32).to_le_bytes().to_vec()])),
                ("x.tokens".into(), 9, array(8, &[string("<bos>"), string("a b")])),
                ("x.nested".into(), 9, array(9, &[array(0, &[vec![1], vec![2]])])),
            ],
            tensors: vec![("a.weight".into(), vec![8, 4], 0, f32s), ("b.weight".into(), vec![32, 2], 8, q8)],
            align: 32,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.meta.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.meta {
            b.extend(string(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            b.extend(string(name));
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(self.align as u64) * self.align as u64;
        }
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            let base = b.len().div_ceil(self.align) * self.align;
            let _ = off;
            b.resize(base, 0);
            b.extend(data);
        }
        b
    }
}

fn parse(bytes: &[u8]) -> Result<(BTreeMap<String, Value>, BTreeMap<String, TensorInfo>)> {
    GgufFile::parse(bytes, Path::new("t.gguf"))
}

fn err(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("parsed without an error"),
        Err(e) => e.to_string(),
    }
}

/// Header (magic, version, counts) followed by one metadata entry of `ty` with `value`.
fn one_entry(ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(string("k"));
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

#[test]
fn a_valid_file_parses_with_its_values_and_tensors() {
    let bytes = Writer::valid().bytes();
    let (meta, tensors) = parse(&bytes).unwrap();
    assert_eq!(meta["general.architecture"].as_str(), Some("gemma3"));
    assert_eq!(meta["gemma3.block_count"].as_u64(), Some(2));
    assert_eq!(meta["x.tokens"].as_array().unwrap()[1].as_str(), Some("a b"));
    assert_eq!(meta["x.nested"].as_array().unwrap()[0].as_array().unwrap().len(), 2);
    assert_eq!(tensors["a.weight"].shape, vec![4, 8]);
    assert_eq!(tensors["b.weight"].shape, vec![2, 32]);
    let a = &tensors["a.weight"];
    let v = dequant::dequantize(a.ggml_type, &bytes[a.offset..a.offset + a.size], 32);
    assert_eq!(v[5], 5.0 * 0.25 - 3.0);
}

#[test]
fn malformed_header_fields_are_errors_naming_the_problem() {
    // Counts and lengths that cannot fit in the file.
    assert!(err(&one_entry(8, &u64::MAX.to_le_bytes())).contains("cannot fit"));
    let mut huge = 0u32.to_le_bytes().to_vec();
    huge.extend((1u64 << 40).to_le_bytes());
    assert!(err(&one_entry(9, &huge)).contains("metadata array of 1099511627776"));
    // Arrays nested past the limit (each level one item).
    let mut nested = array(0, &[vec![7]]);
    for _ in 0..MAX_ARRAY_DEPTH {
        nested = array(9, &[nested]);
    }
    assert!(err(&one_entry(9, &nested)).contains("nested more than"));
    assert!(err(&one_entry(77, &[0; 8])).contains("unknown GGUF metadata type 77"));

    let mut w = Writer::valid();
    w.meta.push(("general.alignment".into(), 4, 0u32.to_le_bytes().to_vec()));
    assert!(err(&w.bytes()).contains("general.alignment"));
    let mut w = Writer::valid();
    w.meta.push(("gemma3.block_count".into(), 4, 3u32.to_le_bytes().to_vec()));
    assert!(err(&w.bytes()).contains("appears twice"));

    let cases: [(Vec<u64>, &str); 4] = [
        (vec![], "0 dimensions"),
        (vec![8, 0], "dimension of 0"),
        (vec![1 << 40, 1 << 40, 1 << 40], "overflows"),
        (vec![8, 1 << 20], "runs past the end"),
    ];
    for (dims, want) in cases {
        let mut w = Writer::valid();
        w.tensors[0].1 = dims.clone();
        let e = err(&w.bytes());
        assert!(e.contains("a.weight") && e.contains(want) && e.contains("t.gguf"), "{dims:?}: {e}");
    }
    // An offset near u64::MAX must not wrap past the bounds check.
    let mut bytes = Writer::valid().bytes();
    let at = bytes.windows(8).position(|w| w == b"a.weight").unwrap() + 8 + 4 + 16 + 4;
    bytes[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(err(&bytes).contains("a.weight"));
    let mut w = Writer::valid();
    w.tensors[1].0 = "a.weight".into();
    assert!(err(&w.bytes()).contains("appears twice"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_truncation_is_an_error(cut in 0usize..1000) {
        let bytes = Writer::valid().bytes();
        let cut = cut % bytes.len();
        prop_assert!(parse(&bytes[..cut]).is_err());
    }

    #[test]
    fn byte_flips_give_an_error_or_a_readable_file(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = Writer::valid().bytes();
        let n = bytes.len();
        for (at, v) in flips {
            bytes[at % n] = v;
        }
        if let Ok((_, tensors)) = parse(&bytes) {
            for info in tensors.values() {
                let n: usize = info.shape.iter().product();
                let v = dequant::dequantize(info.ggml_type, &bytes[info.offset..info.offset + info.size], n);
                prop_assert_eq!(v.len(), n);
            }
        }
    }
}

#[test]
fn gguf_paths_are_told_from_model_directories_by_extension() {
    for p in ["gemma-3-270m-q4_k_m.gguf", "/models/x.GGUF", "a/b.c.gguf"] {
        assert!(is_gguf_path(Path::new(p)), "{p}");
    }
    for p in ["assets/tiny-vlm", "model.safetensors", "gguf", "x.gguf.json"] {
        assert!(!is_gguf_path(Path::new(p)), "{p}");
    }
}
