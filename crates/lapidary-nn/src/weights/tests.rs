//! Loading tests on safetensors files written here: dtypes and conversion, shards, aliases, and
//! every error a user can hit (missing, wrong shape, unexpected, corrupt, unsupported dtype).

use super::*;
use crate::safetensors::SafetensorsFiles;
use safetensors::tensor::{Dtype, TensorView};

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    DType::F32.encode(v)
}

fn dev() -> Device {
    Device::from_env_or_cpu().unwrap()
}

#[test]
fn loads_converts_and_accounts_for_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = [1.0f32, -2.5, 3.25, 0.125, 7.0, -0.5];
    write(
        &dir.path().join("model.safetensors"),
        &[
            ("model.a", Dtype::F32, vec![2, 3], f32_bytes(&a)),
            ("model.b", Dtype::BF16, vec![2], DType::BF16.encode(&[1.5, -3.0])),
            ("extra.c", Dtype::F32, vec![1], f32_bytes(&[9.0])),
        ],
    );
    let w = Weights::open(dir.path(), &dev(), DType::F32).unwrap();
    assert_eq!(w.tensor("model.a", &[2, 3]).unwrap().to_f32_vec().unwrap(), a);
    assert_eq!(w.tensor("model.b", &[2]).unwrap().to_f32_vec().unwrap(), vec![1.5, -3.0]);
    assert_eq!(w.unused(), vec!["extra.c".to_string()]);
    let e = w.finish(&[]).unwrap_err().to_string();
    assert!(e.contains("1 unexpected tensor(s)") && e.contains("extra.c"), "{e}");
    w.finish(&["extra."]).unwrap();

    let w16 = Weights::open(dir.path(), &dev(), DType::BF16).unwrap();
    let t = w16.tensor("model.a", &[2, 3]).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    assert_eq!(t.to_f32_vec().unwrap(), a.iter().map(|&x| DType::BF16.round(x)).collect::<Vec<_>>());
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.safetensors");
    write(&file, &[("w", Dtype::F32, vec![2, 2], f32_bytes(&[1., 2., 3., 4.]))]);
    let w = Weights::open(&file, &dev(), DType::F32).unwrap();
    let e = w.tensor("q_proj.weight", &[4, 8]).unwrap_err().to_string();
    assert!(e.contains("missing tensor q_proj.weight") && e.contains("[4, 8]") && e.contains("one.safetensors"), "{e}");
    let e = w.tensor("w", &[4]).unwrap_err().to_string();
    assert!(e.contains("tensor w has shape [2, 2], expected [4]") && e.contains("one.safetensors"), "{e}");
}

#[test]
fn aliases_let_either_prefix_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    write(&file, &[("vision_tower.vision_model.encoder.w", Dtype::F32, vec![1], f32_bytes(&[4.0]))]);
    let w = Weights::open(&file, &dev(), DType::F32).unwrap().with_alias("vision_tower.", "vision_tower.vision_model.");
    assert_eq!(w.tensor("vision_tower.encoder.w", &[1]).unwrap().to_f32_vec().unwrap(), vec![4.0]);
    assert!(w.unused().is_empty());
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("model-00001-of-00002.safetensors"), &[("a", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
    write(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("b", Dtype::F16, vec![1], DType::F16.encode(&[2.0]))],
    );
    let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let w = Weights::open(dir.path(), &dev(), DType::F32).unwrap();
    assert_eq!(w.tensor("a", &[1]).unwrap().to_f32_vec().unwrap(), vec![1.0]);
    assert_eq!(w.tensor("b", &[1]).unwrap().to_f32_vec().unwrap(), vec![2.0]);
    w.finish(&[]).unwrap();

    let bad = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "zz": "model-00001-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), bad).unwrap();
    let e = Weights::open(dir.path(), &dev(), DType::F32).err().unwrap().to_string();
    assert!(e.contains("lists tensor zz") && e.contains("index.json"), "{e}");

    // Shard names that would leave the model directory are refused before anything is opened.
    for shard in ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", ".."] {
        let bad = format!(r#"{{"weight_map": {{"a": {shard:?}}}}}"#);
        std::fs::write(dir.path().join("model.safetensors.index.json"), bad).unwrap();
        let e = Weights::open(dir.path(), &dev(), DType::F32).err().unwrap().to_string();
        assert!(e.contains("plain file names") && e.contains(shard), "{shard}: {e}");
    }
}

#[test]
fn corrupt_and_unsupported_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.safetensors");
    std::fs::write(&file, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = Weights::open(&file, &dev(), DType::F32).err().unwrap().to_string();
    assert!(e.contains("broken.safetensors: not a valid safetensors file"), "{e}");
    let ints = dir.path().join("ints.safetensors");
    write(&ints, &[("ids", Dtype::I64, vec![2], [7i64.to_le_bytes(), (-100i64).to_le_bytes()].concat())]);
    let w = Weights::open(&ints, &dev(), DType::F32).unwrap();
    let e = w.tensor("ids", &[2]).unwrap_err().to_string();
    assert!(e.contains("tensor ids is stored as I64; expected F32"), "{e}");
    assert_eq!(SafetensorsFiles::open(&ints).unwrap().load_i64("ids").unwrap(), (vec![7, -100], vec![2]));
    let floats = dir.path().join("floats.safetensors");
    write(&floats, &[("x", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
    let e = SafetensorsFiles::open(&floats).unwrap().load_i64("x").unwrap_err().to_string();
    assert!(e.contains("expected an integer tensor"), "{e}");
    let e = Weights::open(dir.path().join("nothing-here"), &dev(), DType::F32).err().unwrap().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Truncations and byte flips of a valid file: an error, or tensors that load; never a panic.
    #[test]
    fn mutated_safetensors_files_are_errors_or_load(cut in 0usize..400, flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..4)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write(&path, &[
            ("a", Dtype::F32, vec![2, 3], f32_bytes(&[1.0, -2.0, 3.0, 4.0, 5.0, 6.0])),
            ("b", Dtype::BF16, vec![4], DType::BF16.encode(&[1.5, -3.0, 0.25, 8.0])),
        ]);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        for (at, v) in flips {
            bytes[at % n] = v;
        }
        if cut % 3 == 0 {
            bytes.truncate(cut % n);
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(files) = SafetensorsFiles::open(dir.path()) {
            let names: Vec<String> = files.names().map(str::to_string).collect();
            for name in names {
                let shape = files.entry(&name).unwrap().shape.clone();
                let w = Weights::open(dir.path(), &dev(), DType::F32).unwrap();
                let _ = w.host_values(&name, &shape);
            }
        }
    }
}

/// A source that is neither safetensors nor GGUF: tensors computed in memory.
struct InMemory {
    origin: std::path::PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl WeightSource for InMemory {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(s, _)| s.clone())
    }
    fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.tensors[name].1.clone())
    }
}

#[test]
fn a_new_source_gets_names_aliases_shape_checks_and_accounting() {
    let tensors = BTreeMap::from([
        ("vision_tower.vision_model.w".to_string(), (vec![2], vec![0.5, -1.25])),
        ("extra".to_string(), (vec![1], vec![3.0])),
    ]);
    let w = Weights::from_source(InMemory { origin: "in-memory".into(), tensors }, &dev(), DType::BF16)
        .with_alias("vision_tower.", "vision_tower.vision_model.");
    assert_eq!(w.tensor("vision_tower.w", &[2]).unwrap().to_f32_vec().unwrap(), vec![0.5, -1.25]);
    assert_eq!(w.stored_names()["vision_tower.w"], "vision_tower.vision_model.w");
    let e = w.tensor("vision_tower.w", &[3]).unwrap_err().to_string();
    assert!(e.contains("in-memory: tensor vision_tower.vision_model.w has shape [2], expected [3]"), "{e}");
    let e = w.tensor("missing", &[4]).unwrap_err().to_string();
    assert!(e.contains("in-memory: missing tensor missing (expected shape [4])"), "{e}");
    let e = w.finish(&[]).unwrap_err().to_string();
    assert!(e.contains("1 unexpected tensor(s)") && e.contains("extra"), "{e}");
    w.finish(&["extra"]).unwrap();
}
