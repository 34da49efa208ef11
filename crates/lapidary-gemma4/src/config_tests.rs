//! Configuration tests: the fixtures' files as transformers 5.24 wrote them (both forms), the
//! per-layer settings HF derives from them (recorded in each fixture's manifest), and bad input.

use crate::{Bidirectional, Gemma4Config, KvSharing, LayerKind};
use serde_json::{Value, json};

fn fixture(kind: &str) -> String {
    format!("{}/../../tests/fixtures/tiny-gemma4-{kind}", env!("CARGO_MANIFEST_DIR"))
}

fn json_of(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// HF's `kv_sharing_modes` as the manifest records them (`null`, `"store"`, `"reuse"`).
fn hf_modes(kind: &str) -> Vec<KvSharing> {
    let m = json_of(&format!("{}/manifest.json", fixture(kind)));
    m["text"]["kv_sharing_modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v.as_str() {
            None => KvSharing::Own,
            Some("store") => KvSharing::Store,
            Some("reuse") => KvSharing::Reuse,
            Some(other) => panic!("{other}"),
        })
        .collect()
}

#[test]
fn the_dense_fixture_resolves_as_transformers_does_in_both_forms() {
    let saved = Gemma4Config::from_file(format!("{}/model/config.json", fixture("dense"))).unwrap();
    let released = Gemma4Config::from_file(format!("{}/config-released-form.json", fixture("dense"))).unwrap();
    let t = &saved.text;
    assert_eq!(t.layer_types, [LayerKind::Sliding, LayerKind::Sliding, LayerKind::Sliding, LayerKind::Full]);
    assert_eq!(t.kv_sharing(), hf_modes("dense"));
    for i in 0..3 {
        let l = t.layer(i);
        assert_eq!((l.head_dim, l.num_key_value_heads, l.k_eq_v, l.intermediate_size), (16, 2, false, 96), "layer {i}");
        assert_eq!(l.rope.inv_freq(16).len(), 8);
        assert!(l.rope.inv_freq(16).iter().all(|&f| f > 0.0));
    }
    let full = t.layer(3);
    assert_eq!((full.head_dim, full.num_key_value_heads, full.k_eq_v), (32, 1, true));
    // Proportional RoPE over 0.25 of a head of 32: 4 of 16 frequencies rotate.
    let inv = full.rope.inv_freq(32);
    assert_eq!(inv.iter().filter(|&&f| f > 0.0).count(), 4);
    assert!((inv[1] - 1e6f32.powf(-2.0 / 32.0)).abs() < 1e-7);
    assert_eq!((t.final_logit_softcapping, t.bidirectional), (Some(30.0), Bidirectional::Vision));
    assert_eq!(t.hidden_size_per_layer_input, 0);
    let v = saved.vision.as_ref().unwrap();
    assert_eq!((v.patch_size, v.pooling_kernel_size, v.head_dim, v.rope_theta), (4, 2, 8, 100.0));
    assert!(v.use_clipped_linears && v.standardize);
    assert_eq!((saved.image_token_id, saved.boi_token_id, saved.eoi_token_id), (120, 121, 122));
    // Every per-layer setting is the same from the released form.
    for i in 0..t.num_layers() {
        assert_eq!(released.text.layer(i), t.layer(i), "layer {i}");
    }
}

#[test]
fn the_e_series_fixture_shares_kv_and_widens_the_reusing_layers_mlp() {
    let cfg = Gemma4Config::from_file(format!("{}/model/config.json", fixture("e"))).unwrap();
    let t = &cfg.text;
    assert_eq!(t.kv_sharing(), hf_modes("e"));
    assert_eq!((t.hidden_size_per_layer_input, t.vocab_size_per_layer_input), (8, 128));
    let widths: Vec<usize> = (0..5).map(|i| t.layer(i).intermediate_size).collect();
    assert_eq!(widths, [96, 96, 96, 192, 192]);
    let sources: Vec<usize> = (0..5).map(|i| t.kv_source(i)).collect();
    assert_eq!(sources, [0, 1, 2, 2, 1]);
    assert!((0..5).all(|i| !t.layer(i).k_eq_v));
    let released = Gemma4Config::from_file(format!("{}/config-released-form.json", fixture("e"))).unwrap();
    assert_eq!(released.text.layer(4), t.layer(4));
}

/// The dense fixture's config with `edit` applied to its text_config.
fn edited(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v = json_of(&format!("{}/model/config.json", fixture("dense")));
    edit(v["text_config"].as_object_mut().unwrap());
    match Gemma4Config::from_json(&v) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let e = edited(|t| {
        t.insert("enable_moe_block".into(), json!(true));
    });
    assert!(e.contains("enable_moe_block") && e.contains("mixture-of-experts"), "{e}");
    let e = edited(|t| {
        t.insert("layer_types".into(), json!(["sliding_attention", "chunked", "sliding_attention", "full_attention"]));
    });
    assert!(e.contains("layer_types") && e.contains("chunked"), "{e}");
    let e = edited(|t| {
        t.insert("layer_types".into(), json!(["sliding_attention", "full_attention"]));
    });
    assert!(e.contains("lists 2 layers, num_hidden_layers is 4"), "{e}");
    let e = edited(|t| {
        t.insert("per_layer_config".into(), json!({"9": {"head_dim": 32}}));
    });
    assert!(e.contains("per_layer_config") && e.contains("past the 4 layers"), "{e}");
    let e = edited(|t| {
        t.insert("per_layer_config".into(), json!({"3": {"head_dim": 32, "sliding_window": 9}}));
    });
    assert!(e.contains("per_layer_config.3") && e.contains("sliding_window"), "{e}");
    let e = edited(|t| {
        t.insert("per_layer_config".into(), json!({"3": {"num_key_value_heads": 3}}));
    });
    assert!(e.contains("layer 3's num_key_value_heads 3 does not divide num_attention_heads 4"), "{e}");
    let e = edited(|t| {
        t.insert("rope_parameters".into(), json!({"full_attention": {"rope_type": "yarn"}}));
    });
    assert!(e.contains("rope_type") && e.contains("yarn"), "{e}");
    let e = edited(|t| {
        t.insert("use_bidirectional_attention".into(), json!("images"));
    });
    assert!(e.contains("use_bidirectional_attention"), "{e}");
    let e = edited(|t| {
        t.remove("vocab_size");
    });
    assert!(e.contains("text_config: missing field vocab_size"), "{e}");
    // Only full layers before the shared ones: the sliding layers that reuse have no source.
    let e = edited(|t| {
        t.insert(
            "layer_types".into(),
            json!(["full_attention", "full_attention", "sliding_attention", "full_attention"]),
        );
        t.insert("num_kv_shared_layers".into(), json!(2));
    });
    assert!(e.contains("layer 2") && e.contains("reuses K/V"), "{e}");
    // A file error names the file.
    let dir = std::env::temp_dir().join(format!("lapidary-gemma4-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, "{\"text_config\": {\"num_hidden_layers\": 2}}").unwrap();
    let e = Gemma4Config::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("missing field"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn released_form_defaults_follow_transformers() {
    // Without per_layer_config or global_head_dim, full layers take HF's default 512; the
    // global key/value heads apply only with K = V (as HF's post-init does).
    let mut v = json_of(&format!("{}/model/config.json", fixture("dense")));
    let t = v["text_config"].as_object_mut().unwrap();
    t.remove("per_layer_config");
    t.insert("num_global_key_value_heads".into(), json!(1));
    let cfg = Gemma4Config::from_json(&v).unwrap();
    assert_eq!((cfg.text.layer(3).head_dim, cfg.text.layer(3).num_key_value_heads), (512, 1));
    v["text_config"]["attention_k_eq_v"] = json!(false);
    let cfg = Gemma4Config::from_json(&v).unwrap();
    assert_eq!((cfg.text.layer(3).head_dim, cfg.text.layer(3).num_key_value_heads), (512, 2));
    // The last layer is full whatever layer_types says, as HF forces it.
    v["text_config"]["layer_types"] = json!(vec!["sliding_attention"; 4]);
    let cfg = Gemma4Config::from_json(&v).unwrap();
    assert_eq!(cfg.text.layer_types[3], LayerKind::Full);
}
