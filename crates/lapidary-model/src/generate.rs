//! Choosing tokens for generation, the same for every family: the prompt (with its images) is
//! run once by the model, then one token at a time ([`decode`]); greedy, or sampled with
//! temperature, top-k and top-p. Stops at any of the stop ids or after `max_new_tokens`. Not the
//! model's cache (each family keeps its own) nor tokenization or chat formatting.

use lapidary_core::rng::SplitMix64;
use lapidary_core::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sampled from the softmax at `temperature`, keeping the `top_k` most likely tokens
    /// (0 = all) and the smallest set whose probability reaches `top_p` (1 = all).
    Sample {
        /// Divides the logits.
        temperature: f32,
        /// Keep this many most likely tokens (0 = no limit).
        top_k: usize,
        /// Keep the most likely tokens up to this cumulative probability.
        top_p: f32,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Token ids that end generation (included in the output).
    pub stop: Vec<u32>,
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best }) as u32
}

fn sample(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, rng: &mut SplitMix64) -> u32 {
    let t = temperature.max(1e-5);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        idx.truncate(top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - max) / t) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    // The smallest head whose probability reaches top_p.
    let mut acc = 0.0;
    let keep = probs
        .iter()
        .position(|p| {
            acc += p;
            acc >= top_p as f64
        })
        .map_or(probs.len(), |k| k + 1);
    let total: f64 = probs[..keep].iter().sum();
    let mut r = rng.next_f32() as f64 * total;
    for k in 0..keep {
        r -= probs[k];
        if r <= 0.0 {
            return idx[k] as u32;
        }
    }
    idx[keep - 1] as u32
}

/// The generation loop: `first` is the logits after the prompt, `step(token)` runs one more
/// token through the model and returns the logits after it. Returns the new tokens.
pub fn decode(
    first: Vec<f32>,
    mut step: impl FnMut(u32) -> Result<Vec<f32>>,
    opts: &GenerateOptions,
) -> Result<Vec<u32>> {
    let mut logits = first;
    let mut rng = SplitMix64::new(if let Sampling::Sample { seed, .. } = opts.sampling { seed } else { 0 });
    let mut out = Vec::new();
    while out.len() < opts.max_new_tokens {
        Error::check_finite(
            &format!("generation: the logits of step {}", out.len()),
            &logits,
            "the weights, adapter or pixels hold non-finite values",
        )?;
        let next = match opts.sampling {
            Sampling::Greedy => argmax(&logits),
            Sampling::Sample { temperature, top_k, top_p, .. } => sample(&logits, temperature, top_k, top_p, &mut rng),
        };
        out.push(next);
        if opts.stop.contains(&next) || out.len() == opts.max_new_tokens {
            break;
        }
        logits = step(next)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = SplitMix64::new(1);
        for _ in 0..20 {
            assert_eq!(sample(&logits, 1.0, 1, 1.0, &mut rng), 1);
            let s = sample(&logits, 1.0, 0, 0.6, &mut rng);
            assert!(s == 1 || s == 3, "{s}");
        }
        assert_eq!(argmax(&logits), 1);
    }

    #[test]
    fn decoding_stops_at_a_stop_id_or_the_limit() {
        // Logits that make token (step + 1) % 4 the most likely.
        let logits = |k: u32| (0..4).map(|i| if i == (k + 1) % 4 { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let opts =
            |stop: Vec<u32>, max_new_tokens| GenerateOptions { max_new_tokens, sampling: Sampling::Greedy, stop };
        assert_eq!(decode(logits(0), |t| Ok(logits(t)), &opts(vec![3], 10)).unwrap(), vec![1, 2, 3]);
        assert_eq!(decode(logits(0), |t| Ok(logits(t)), &opts(vec![], 5)).unwrap(), vec![1, 2, 3, 0, 1]);
        let e = decode(vec![f32::NAN; 4], |t| Ok(logits(t)), &opts(vec![], 5)).unwrap_err().to_string();
        assert!(e.contains("logits of step 0"), "{e}");
    }
}
