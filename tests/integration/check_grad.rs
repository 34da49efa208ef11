//! The gradient-flow check: finite differences for every differentiable op, then a chain across
//! crate boundaries — an encoder feeding a decoder through a projector, built from
//! `lapidary-nn` linears with `lapidary-lora` adapters on frozen bases, run by the
//! `lapidary-autograd` tape with checkpointing off and on. One table; any failure fails.
//! Then the real tiny Gemma 3 VLM (tests/fixtures/tiny-gemma3) fully fine-tuned: every
//! parameter must get a finite gradient, non-zero except SigLIP's k_proj biases (zero in theory:
//! softmax ignores a shift of all scores, so only rounding is left), and checkpointing must not
//! change a bit. Last, the LoRA matrix on the real tiny model: {vision on/off} x {language on/off}
//! x {attention, mlp, both} x {projector frozen, trained} x {checkpointing off, on} x {image,
//! text-only batch}, adapters with random non-zero A and B (with B = 0 every A gradient would be
//! zero at step 0). Then the same for both tiny Gemma 4 models (`check_grad_gemma4.rs`). Run
//! with `cargo xtask check-grad` to see the table.

use lapidary::autograd::{BackwardOptions, Tape, Trainable, Var, gradcheck, ops};
use lapidary::core::{DType, Device, Result, Tensor};
use lapidary::gemma3::OpenOptions;
use lapidary::kernels::attention::AttentionMask;
use lapidary::lora::LoraAdapter;
use lapidary::model::{AdapterHost, Checkpointing, Model};
use lapidary::nn::{Layer, Linear, ParamFn, checkpointed, map_within};
use std::collections::BTreeMap;
use std::rc::Rc;

pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) trainable: usize,
    pub(crate) nonzero: usize,
    pub(crate) frozen_touched: usize,
    pub(crate) diff: String,
    pub(crate) ok: bool,
}

impl Row {
    /// A failed case: the error goes in the last column.
    pub(crate) fn failed(case: String, error: String) -> Row {
        Row { case, trainable: 0, nonzero: 0, frozen_touched: 0, diff: error, ok: false }
    }
}

const HIDDEN: usize = 8;
const RANK: usize = 2;

/// Builds tensors for the chain from deterministic seeds, so two runs see the same weights.
struct Weights<'a> {
    tape: &'a Tape,
    dev: Device,
    seed: u64,
}

impl Weights<'_> {
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        self.seed += 1;
        let v: Vec<f32> = gradcheck::values(shape.iter().product(), self.seed).iter().map(|x| x * scale).collect();
        Tensor::from_f32(&self.dev, &v, shape, DType::F32).unwrap()
    }

    fn param(&mut self, name: &str, shape: &[usize], trainable: bool) -> Var {
        let scale = 1.0 / (shape.last().copied().unwrap_or(1) as f32).sqrt();
        let t = self.tensor(shape, scale);
        self.tape.param(name, t, if trainable { Trainable::Yes } else { Trainable::No })
    }

    /// A frozen linear at `path`, with a LoRA adapter (non-zero A and B) when `adapt`.
    fn linear(&mut self, path: &str, out: usize, inp: usize, adapt: bool) -> Linear {
        let w = self.param(&format!("{path}.weight"), &[out, inp], false);
        let b = self.param(&format!("{path}.bias"), &[out], false);
        let mut l = Linear::new(path, w, Some(b));
        if adapt {
            let a = self.param(&format!("{path}.lora_A.weight"), &[RANK, inp], true);
            let bb = self.param(&format!("{path}.lora_B.weight"), &[out, RANK], true);
            l.set_adapter(Rc::new(LoraAdapter::new(a, bb, 4.0, false).unwrap()));
        }
        l
    }
}

/// One pre-norm residual MLP block (the encoder's layer): `h + fc2(gelu(fc1(ln(h))))`.
#[derive(Clone)]
struct EncoderBlock {
    ln: (Var, Var),
    fc1: Linear,
    fc2: Linear,
}

/// The one [`Layer`] implementation a layer type needs: its parameters walked by name.
impl Layer for EncoderBlock {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        Ok(EncoderBlock {
            ln: (f("layer_norm.weight", &self.ln.0)?, f("layer_norm.bias", &self.ln.1)?),
            fc1: map_within("mlp.fc1", &self.fc1, f)?,
            fc2: map_within("mlp.fc2", &self.fc2, f)?,
        })
    }
}

impl EncoderBlock {
    fn forward(&self, h: &Var) -> Result<Var> {
        let x = ops::layer_norm(h, &self.ln.0, &self.ln.1, 1e-6)?;
        ops::add(h, &self.fc2.forward(&ops::gelu_tanh(&self.fc1.forward(&x)?)?)?)
    }
}

/// One pre-norm single-head causal attention block with RoPE (the decoder's layer).
#[derive(Clone)]
struct DecoderBlock {
    norm: Var,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

impl Layer for DecoderBlock {
    fn map_params(&self, f: &mut ParamFn<'_>) -> Result<Self> {
        Ok(DecoderBlock {
            norm: f("input_layernorm.weight", &self.norm)?,
            q: map_within("self_attn.q_proj", &self.q, f)?,
            k: map_within("self_attn.k_proj", &self.k, f)?,
            v: map_within("self_attn.v_proj", &self.v, f)?,
            o: map_within("self_attn.o_proj", &self.o, f)?,
        })
    }
}

impl DecoderBlock {
    fn forward(&self, h: &Var, rope: &(Tensor, Tensor)) -> Result<Var> {
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let x = ops::gemma_rms_norm(h, &self.norm, 1e-6)?;
        let heads = |l: &Linear| -> Result<Var> { ops::reshape(&l.forward(&x)?, &[b, 1, t, HIDDEN]) };
        let qh = ops::rope(&heads(&self.q)?, &rope.0, &rope.1)?;
        let kh = ops::rope(&heads(&self.k)?, &rope.0, &rope.1)?;
        let att = ops::attention(&qh, &kh, &heads(&self.v)?, 1.0 / (HIDDEN as f32).sqrt(), &AttentionMask::causal())?;
        ops::add(h, &self.o.forward(&ops::reshape(&att, &[b, t, HIDDEN])?)?)
    }
}

struct ChainCase {
    vision: bool,
    language: bool,
    checkpointing: bool,
    image: bool,
}

/// Runs the chain once; returns (gradients by name, trainable count, non-zero count, frozen touched).
/// Gradients by name, trainable leaves, leaves with a finite non-zero gradient, frozen touched.
type ChainResult = (BTreeMap<String, Vec<f32>>, usize, usize, usize);

fn run_chain(c: &ChainCase) -> Result<ChainResult> {
    let dev = Device::from_env_or_cpu()?;
    let tape = Tape::new();
    let mut w = Weights { tape: &tape, dev: dev.clone(), seed: 7 };
    let (batch, patches, patch_dim, tokens, vocab) = (2, 4, 6, 7, 11);
    // Encoder ("vision tower"): frozen patch embedding, then two adapted, checkpointable layers.
    let pixels = tape.input(w.tensor(&[batch, patches, patch_dim], 1.0));
    let embed = w.linear("vision.patch_embedding", HIDDEN, patch_dim, false);
    let mut h = embed.forward(&pixels)?;
    for l in 0..2 {
        let p = format!("vision.layers.{l}");
        let layer = EncoderBlock {
            ln: (
                w.param(&format!("{p}.layer_norm.weight"), &[HIDDEN], false),
                w.param(&format!("{p}.layer_norm.bias"), &[HIDDEN], false),
            ),
            fc1: w.linear(&format!("{p}.mlp.fc1"), 2 * HIDDEN, HIDDEN, c.vision),
            fc2: w.linear(&format!("{p}.mlp.fc2"), HIDDEN, 2 * HIDDEN, c.vision),
        };
        // The same checkpoint helper the model crates use.
        h = checkpointed(&layer, &h, Checkpointing::each_layer_if(c.checkpointing), |l, x| l.forward(x))?;
    }
    // Projector (frozen), then the decoder: image features replace the image-token rows.
    let proj = w.linear("projector", HIDDEN, HIDDEN, false);
    let image_features = ops::reshape(&proj.forward(&h)?, &[batch * patches, HIDDEN])?;
    let table = w.param("language.embed_tokens.weight", &[vocab, HIDDEN], false);
    let ids: Vec<u32> = (0..batch * tokens).map(|i| (i as u32 * 5 + 1) % vocab as u32).collect();
    let mut x = ops::gather_rows(&table, &ids)?;
    if c.image {
        // Tokens 1..=4 of each row are the image's tokens.
        let rows: Vec<u32> = (0..batch).flat_map(|b| (1..=patches).map(move |p| (b * tokens + p) as u32)).collect();
        x = ops::scatter_rows(&x, &image_features, &rows)?;
    }
    let mut h = ops::reshape(&x, &[batch, tokens, HIDDEN])?;
    let positions: Vec<usize> = (0..tokens).collect();
    let (cos, sin) = lapidary::kernels::rope::tables(&positions, HIDDEN, 10_000.0, 1.0);
    let rope = (
        Tensor::from_f32(&dev, &cos, &[1, tokens, HIDDEN], DType::F32)?,
        Tensor::from_f32(&dev, &sin, &[1, tokens, HIDDEN], DType::F32)?,
    );
    for l in 0..2 {
        let p = format!("language.layers.{l}");
        let mut linear = |n: &str| w.linear(&format!("{p}.self_attn.{n}"), HIDDEN, HIDDEN, c.language);
        let (q, k, v, o) = (linear("q_proj"), linear("k_proj"), linear("v_proj"), linear("o_proj"));
        let layer =
            DecoderBlock { norm: w.param(&format!("{p}.input_layernorm.weight"), &[HIDDEN], false), q, k, v, o };
        let rope2 = rope.clone();
        h = checkpointed(&layer, &h, Checkpointing::each_layer_if(c.checkpointing), move |l, x| l.forward(x, &rope2))?;
    }
    // Tied head and the loss on every next token.
    let logits = ops::matmul(&ops::reshape(&h, &[batch * tokens, HIDDEN])?, &table, None, ops::Layout::ABt)?;
    let labels: Vec<i64> =
        (0..batch * tokens).map(|i| if i % tokens == tokens - 1 { -100 } else { ids[i + 1] as i64 }).collect();
    let loss = ops::cross_entropy(&logits, &labels, None)?;
    // A vision adapter on a text-only batch legitimately gets no gradient: allowed explicitly.
    let mut opts = BackwardOptions::default();
    if !c.image {
        opts.allow_missing = (0..2)
            .flat_map(|l| {
                ["fc1", "fc2"].map(|f| ["A", "B"].map(move |ab| format!("vision.layers.{l}.mlp.{f}.lora_{ab}.weight")))
            })
            .flatten()
            .collect();
    }
    let (grads, report) = tape.backward_with(&loss, &opts)?;
    let named = grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect();
    Ok((named, report.rows.len(), report.nonzero(), report.frozen_touched.len()))
}

pub(crate) fn max_rel_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    let mut worst = 0f64;
    for (k, va) in a {
        let Some(vb) = b.get(k) else { return f64::INFINITY };
        let scale = va.iter().fold(0f64, |m, x| m.max(x.abs() as f64)).max(1e-12);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((*x as f64 - *y as f64).abs() / scale);
        }
    }
    if a.len() != b.len() { f64::INFINITY } else { worst }
}

#[test]
fn check_grad() {
    let mut rows = Vec::new();
    for (i, (name, shapes, op)) in gradcheck::op_cases().into_iter().enumerate() {
        let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let (diff, nonzero, ok) = match gradcheck::fd_check(name, &shapes, 1000 + i as u64, op.as_ref()) {
            Ok(r) => (format!("{:.3} of tol (fd)", r.worst), r.nonzero_inputs, r.nonzero_inputs == r.inputs),
            Err(e) => (e.to_string(), 0, false),
        };
        rows.push(Row { case: format!("op {name}"), trainable: shapes.len(), nonzero, frozen_touched: 0, diff, ok });
    }
    let cases = [(true, true, true), (true, false, true), (false, true, true), (true, true, false)];
    for (vision, language, image) in cases {
        let base = ChainCase { vision, language, checkpointing: false, image };
        let (g0, n0, nz0, fz0) = run_chain(&base).expect("chain without checkpointing");
        for checkpointing in [false, true] {
            let c = ChainCase { checkpointing, ..base };
            let label = format!(
                "chain vision={} language={} ckpt={} batch={}",
                if vision { "lora" } else { "off" },
                if language { "lora" } else { "off" },
                if checkpointing { "on" } else { "off" },
                if image { "image" } else { "text-only" }
            );
            match run_chain(&c) {
                Ok((g, n, nz, fz)) => {
                    let diff = max_rel_diff(&g0, &g);
                    // Text-only: the vision adapters cannot get a gradient (shown, not hidden).
                    let expected_nonzero = if image { n } else { n - if vision { 8 } else { 0 } };
                    let ok = nz == expected_nonzero && fz == 0 && diff == 0.0 && n == n0 && nz == nz0 && fz == fz0;
                    let diff =
                        if image || !vision { format!("{diff:.1e}") } else { format!("{diff:.1e} (vision n/a)") };
                    rows.push(Row { case: label, trainable: n, nonzero: nz, frozen_touched: fz, diff, ok });
                }
                Err(e) => rows.push(Row::failed(label, e.to_string())),
            }
        }
    }
    rows.extend(real_model_rows());
    rows.extend(lora_matrix_rows());
    rows.extend(crate::check_grad_gemma4::gemma4_rows());
    println!(
        "\n{:<86} {:>9} {:>16} {:>14}  max rel diff (vs fd / vs no ckpt)",
        "case", "trainable", "finite non-zero", "frozen touched"
    );
    for r in &rows {
        println!(
            "{:<86} {:>9} {:>16} {:>14}  {}{}",
            r.case,
            r.trainable,
            r.nonzero,
            r.frozen_touched,
            r.diff,
            if r.ok { "" } else { "  FAIL" }
        );
    }
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.case.as_str()).collect();
    assert!(failed.is_empty(), "check-grad failed: {failed:?}");
}

/// Full fine-tuning of the real tiny model on the fixture batches, checkpointing off and on.
fn real_model_rows() -> Vec<Row> {
    use lapidary::gemma3::Gemma3ForConditionalGeneration;
    let dev = Device::from_env_or_cpu().unwrap();
    let root = crate::repo_path("tests/fixtures/tiny-gemma3");
    let mut rows = Vec::new();
    for case in ["two_rows_one_image_each", "text_only"] {
        let batch =
            lapidary::gemma3::Batch::read(&root.join("cases").join(format!("{case}.safetensors")), &dev).unwrap();
        // (gradients by name, trainable leaves, finite non-zero, names with an exactly-zero gradient)
        type RealRun = (BTreeMap<String, Vec<f32>>, usize, usize, Vec<String>);
        let run = |checkpointing: bool| -> Result<RealRun> {
            let model =
                Gemma3ForConditionalGeneration::open(root.join("model"), &dev, &OpenOptions::all(Trainable::Yes))?;
            let tape = model.tape().clone();
            let pixels = batch.pixel_values.as_ref().map(|p| tape.input(p.clone()));
            let loss =
                model.forward(&batch, &crate::forward_options(pixels.as_ref(), checkpointing))?.loss.expect("labels");
            let mut opts = BackwardOptions::default();
            if pixels.is_none() {
                opts.allow_missing =
                    tape.leaf_names().into_iter().filter(|n| !n.starts_with("language_model.")).collect();
            }
            let (grads, report) = tape.backward_with(&loss, &opts)?;
            let zero: Vec<String> =
                report.rows.iter().filter(|r| r.has_grad && r.norm == 0.0).map(|r| r.name.clone()).collect();
            let named = grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect();
            Ok((named, report.rows.len(), report.nonzero(), zero))
        };
        let base = run(false);
        for checkpointing in [false, true] {
            let label = format!("gemma3-tiny full ckpt={} batch={case}", if checkpointing { "on" } else { "off" });
            match (&base, run(checkpointing)) {
                (Ok((g0, ..)), Ok((g, n, nz, zero))) => {
                    let diff = max_rel_diff(g0, &g);
                    // Exactly-zero gradients may only be the k_proj biases (see the module docs).
                    let only_kbias = zero.iter().all(|z| z.ends_with("self_attn.k_proj.bias"));
                    let reached = if case == "text_only" { g.len() } else { n };
                    let ok = diff == 0.0 && only_kbias && nz + zero.len() == reached;
                    let note = if case == "text_only" {
                        format!("{diff:.1e} (vision, projector n/a)")
                    } else {
                        format!("{diff:.1e}")
                    };
                    let note = if zero.is_empty() { note } else { format!("{note}; zero: {}", zero.join(", ")) };
                    rows.push(Row { case: label, trainable: n, nonzero: nz, frozen_touched: 0, diff: note, ok });
                }
                (base, this) => {
                    let e = this.err().map(|e| e.to_string()).or_else(|| base.as_ref().err().map(|e| e.to_string()));
                    rows.push(Row::failed(label, e.unwrap_or_default()));
                }
            }
        }
    }
    rows
}

/// (gradients by name, trainable, finite non-zero, frozen touched, trainable a text batch cannot reach)
type MatrixRun = (BTreeMap<String, Vec<f32>>, usize, usize, usize, usize);

/// The LoRA matrix on the real tiny model (see the module docs).
fn lora_matrix_rows() -> Vec<Row> {
    use lapidary::core::rng::SplitMix64;
    use lapidary::gemma3::{Gemma3ForConditionalGeneration, Parts};
    use lapidary::lora::{LoraConfig, LoraInit, LoraTargets, attach_lora_to};
    let dev = Device::from_env_or_cpu().unwrap();
    let root = crate::repo_path("tests/fixtures/tiny-gemma3");
    let batches: Vec<(&str, lapidary::gemma3::Batch)> = ["two_rows_one_image_each", "text_only"]
        .iter()
        .map(|c| {
            (*c, lapidary::gemma3::Batch::read(&root.join("cases").join(format!("{c}.safetensors")), &dev).unwrap())
        })
        .collect();
    let mut rows = Vec::new();
    for (vision, language) in [(true, true), (true, false), (false, true), (false, false)] {
        let module_sets: &[(&str, bool, bool)] = if vision || language {
            &[("attn", true, false), ("mlp", false, true), ("both", true, true)]
        } else {
            &[("-", false, false)]
        };
        for &(modules, attention, mlp) in module_sets {
            for projector in [false, true] {
                if !vision && !language && !projector {
                    continue;
                }
                for (case, batch) in &batches {
                    let run = |checkpointing: bool| -> Result<MatrixRun> {
                        let parts = Parts {
                            vision: Trainable::No,
                            projector: if projector { Trainable::Yes } else { Trainable::No },
                            text: Trainable::No,
                        };
                        let mut model = Gemma3ForConditionalGeneration::open(
                            root.join("model"),
                            &dev,
                            &OpenOptions { parts, ..OpenOptions::default() },
                        )?;
                        let tape = model.tape().clone();
                        if vision || language {
                            let cfg = LoraConfig {
                                r: 2,
                                lora_alpha: 4.0,
                                use_rslora: false,
                                targets: LoraTargets::Layers { vision, language, attention, mlp },
                                init: LoraInit::Random(0.3),
                                dropout: None,
                            };
                            attach_lora_to(&cfg, &mut model, &dev, &mut SplitMix64::new(11))?;
                        }
                        let pixels = batch.pixel_values.as_ref().map(|p| tape.input(p.clone()));
                        let loss = model
                            .forward(batch, &crate::forward_options(pixels.as_ref(), checkpointing))?
                            .loss
                            .expect("labels");
                        // What a text-only batch cannot reach: vision adapters and the projector.
                        let unreachable: Vec<String> = tape
                            .leaf_names()
                            .into_iter()
                            .filter(|n| lapidary::gemma3::part_of(n).is_vision_side())
                            .collect();
                        let mut opts = BackwardOptions::default();
                        if pixels.is_none() {
                            opts.allow_missing = unreachable.clone();
                        }
                        let (grads, report) = tape.backward_with(&loss, &opts)?;
                        let trainable_unreachable =
                            report.rows.iter().filter(|r| unreachable.contains(&r.name)).count();
                        let named =
                            grads.named().into_iter().map(|(n, g)| (n.to_string(), g.to_f32_vec().unwrap())).collect();
                        Ok((
                            named,
                            report.rows.len(),
                            report.nonzero(),
                            report.frozen_touched.len(),
                            trainable_unreachable,
                        ))
                    };
                    let base = run(false);
                    for checkpointing in [false, true] {
                        let label = format!(
                            "lora vision={} language={} modules={modules} projector={} ckpt={} batch={}",
                            if vision { "on" } else { "off" },
                            if language { "on" } else { "off" },
                            if projector { "trained" } else { "frozen" },
                            if checkpointing { "on" } else { "off" },
                            if *case == "text_only" { "text" } else { "image" },
                        );
                        match (&base, run(checkpointing)) {
                            (Ok((g0, ..)), Ok((g, n, nz, fz, unreachable))) => {
                                let text = *case == "text_only";
                                let expected = if text { n - unreachable } else { n };
                                let diff = max_rel_diff(g0, &g);
                                let ok = nz == expected && fz == 0 && diff == 0.0;
                                let note = if text && unreachable > 0 {
                                    format!("{diff:.1e} ({unreachable} vision/projector tensors n/a)")
                                } else {
                                    format!("{diff:.1e}")
                                };
                                rows.push(Row {
                                    case: label,
                                    trainable: n,
                                    nonzero: nz,
                                    frozen_touched: fz,
                                    diff: note,
                                    ok,
                                });
                            }
                            (base, this) => {
                                let e = this
                                    .err()
                                    .map(|e| e.to_string())
                                    .or_else(|| base.as_ref().err().map(|e| e.to_string()));
                                rows.push(Row::failed(label, e.unwrap_or_default()));
                            }
                        }
                    }
                }
            }
        }
    }
    rows
}
