//! The main job's pieces: the pretrained base it starts from names colours through lapidary's
//! whole path (images from PNG files, processor, SigLIP, projector, decoder, greedy generation),
//! and a short demo run writes both runs' adapters, metrics and the plot of both.

use lapidary::core::Device;
use lapidary::demo::{DemoOptions, caption_accuracy, demo_base_model, write_dataset};
use lapidary::train::{TrainConfig, Trainer};

#[test]
fn the_demo_base_names_the_colour_and_not_the_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let items = write_dataset(dir.path(), "eval", 12, 99).unwrap();
    let dev = Device::from_env_or_cpu().unwrap();
    let cfg = TrainConfig {
        model: demo_base_model(),
        data: dir.path().join("eval.jsonl"),
        eval_fraction: 0.0,
        output_dir: dir.path().join("out"),
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(cfg, &dev).unwrap();
    let (acc, example) = caption_accuracy(&trainer, &items).unwrap();
    // Pretrained on "A <colour> shape.": every colour right, no pattern named yet.
    assert_eq!(acc.colour, 1.0, "{acc}; e.g. {example}");
    assert_eq!((acc.pattern, acc.exact), (0.0, 0.0), "{acc}; e.g. {example}");
    assert!(example.ends_with(&format!("-> \"A {} shape.\"", items[0].colour)), "{example}");
}

#[test]
fn a_short_demo_writes_both_runs_and_one_plot_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let opts = DemoOptions { out: out.clone(), steps: 2, train_rows: 16, eval_rows: 2, ..DemoOptions::default() };
    lapidary::demo::run(&Device::from_env_or_cpu().unwrap(), &opts).unwrap();
    for run in ["vision-language", "language-only"] {
        for f in ["final/adapter_model.safetensors", "metrics.jsonl", "loss.png"] {
            assert!(out.join(run).join(f).is_file(), "{run}/{f}");
        }
    }
    let plot = image::open(out.join("loss.png")).unwrap().to_rgb8();
    for (r, g, b) in &lapidary::train::plot::PALETTE[..2] {
        assert!(plot.pixels().any(|p| p.0 == [*r, *g, *b]), "a curve in ({r}, {g}, {b})");
    }
}
