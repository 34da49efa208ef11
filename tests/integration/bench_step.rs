//! `lapidary bench-step` on the tiny HF fixture: the first step's loss is HF's loss of the batch
//! (adapters start as zero deltas), the steps move the adapters, and the report's counts and
//! memory readings are consistent.

use lapidary::bench_step::{BenchStepOptions, run};
use lapidary::core::{DType, Device};
use lapidary::nn::safetensors::LoadTensor;
use lapidary::nn::safetensors::SafetensorsFiles;

#[test]
fn first_step_loss_is_hfs_and_the_report_adds_up() {
    let dev = Device::from_env_or_cpu().unwrap();
    let root = crate::repo_path("tests/fixtures/tiny-gemma3");
    let case = root.join("cases/two_rows_one_image_each.safetensors");
    let opts = BenchStepOptions {
        steps: 2,
        warmup: 1,
        lora_r: 4,
        base: None,
        checkpointing: lapidary::model::Checkpointing::EachLayer,
        profile: true,
    };
    let report = run(&root.join("model"), &case, &opts, &dev).unwrap();
    let f = SafetensorsFiles::open(&case).unwrap();
    let want = f.load("loss", &dev, DType::F32).unwrap().to_f32_vec().unwrap()[0];
    let rel = ((report.first_loss - want) / want).abs();
    assert!(rel < 1e-5, "first loss {} vs HF {want}", report.first_loss);
    assert!(report.last_loss.is_finite() && report.last_loss != report.first_loss, "the adapters did not move");
    assert_eq!(report.step_s.len(), 2);
    let mask = f.load_i64("attention_mask").unwrap().0;
    assert_eq!(report.tokens, mask.iter().filter(|&&m| m != 0).count());
    assert!(report.trainable > 0);
    assert!(report.loaded_bytes > 0 && report.reserved_bytes >= report.in_use_bytes);
    assert!(report.tokens_per_s() > 0.0);
    let json: serde_json::Value = serde_json::from_str(&report.to_json(&dev)).unwrap();
    assert_eq!(json["tokens"], report.tokens);
    // The profiled step: the matmul kernel among those timed, times that add up to at most the
    // step's wall time (each kernel waited for), every launch counted once.
    let p = report.profile.as_ref().expect("profiled");
    println!("{}", p.table());
    assert!(
        p.rows.iter().any(|r| r.kernel.to_lowercase().contains("matmul") && r.launches > 0 && r.seconds > 0.0),
        "{p:?}"
    );
    assert!(p.kernel_s() > 0.0 && p.kernel_s() <= p.wall_s * 1.05, "{} of {}", p.kernel_s(), p.wall_s);
    assert!(p.launches() > 50, "a LoRA step launches far more kernels than {}", p.launches());
    assert_eq!(json["profile"]["launches"], p.launches());
}

#[test]
fn zero_steps_is_an_error() {
    let dev = Device::from_env_or_cpu().unwrap();
    let root = crate::repo_path("tests/fixtures/tiny-gemma3");
    let case = root.join("cases/two_rows_one_image_each.safetensors");
    let opts = BenchStepOptions { steps: 0, ..Default::default() };
    let err = run(&root.join("model"), &case, &opts, &dev).unwrap_err().to_string();
    assert!(err.contains("--steps"), "{err}");
}
