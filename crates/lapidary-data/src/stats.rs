//! What an encoded dataset holds and what training on it costs: rows, tokens (image tokens, the
//! tokens trained on), the length histogram, and the token slots micro-batches take padded
//! row by row versus packed. Also one row rendered with its trained tokens marked. Not loading
//! (`dataset.rs`) nor the row order, which the caller gives (the trainer's shuffle).

use crate::dataset::Dataset;
use crate::pack::first_fit_decreasing;
use crate::processor::{Example, Processor};
use lapidary_io::Result;
use std::fmt;

/// What training computes for a dataset's rows in one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchCost {
    /// Sequences (rows, or packed rows).
    pub sequences: usize,
    /// Micro-batches.
    pub micro_batches: usize,
    /// Token slots: each micro-batch's sequences × its longest sequence, summed.
    pub slots: usize,
    /// Real tokens.
    pub tokens: usize,
}

impl BatchCost {
    /// The share of the slots that is padding.
    pub fn padding(&self) -> f64 {
        if self.slots == 0 { 0.0 } else { 1.0 - self.tokens as f64 / self.slots as f64 }
    }
}

/// A dataset's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetStats {
    /// Rows encoded.
    pub rows: usize,
    /// Rows skipped as unusable.
    pub skipped: usize,
    /// Rows cut to `max_len`.
    pub cut: usize,
    /// Images.
    pub images: usize,
    /// Tokens (after cutting).
    pub tokens: usize,
    /// Image soft tokens among them.
    pub image_tokens: usize,
    /// Tokens trained on (a label that predicts them; a row's first token never is).
    pub label_tokens: usize,
    /// Shortest and longest row in tokens.
    pub shortest: usize,
    /// Longest row in tokens.
    pub longest: usize,
    /// Rows by length: `(from, to, rows)` with `from <= length < to`, powers of two.
    pub histogram: Vec<(usize, usize, usize)>,
    /// One epoch's micro-batches of rows padded to the longest in each.
    pub padded: BatchCost,
    /// The same with packing (`max_len` rows, first-fit decreasing).
    pub packed: BatchCost,
    /// Micro-batch size the costs assume.
    pub micro_batch_size: usize,
    /// Row length limit.
    pub max_len: usize,
}

/// The figures of `ds`, its micro-batches of `micro_batch_size` taken in the order
/// `order(n)` gives for `n` units (rows, or packed rows), as the trainer's first epoch takes them.
pub fn dataset_stats(
    ds: &Dataset,
    max_len: usize,
    micro_batch_size: usize,
    order: &dyn Fn(usize) -> Vec<usize>,
) -> DatasetStats {
    let ex = &ds.examples;
    let lengths: Vec<usize> = ex.iter().map(|e| e.input_ids.len()).collect();
    let mut histogram = Vec::new();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut from = 0;
    let mut to = 16;
    while from <= longest {
        let rows = lengths.iter().filter(|&&l| l >= from && l < to).count();
        histogram.push((from, to, rows));
        (from, to) = (to, to * 2);
    }
    let units: Vec<Vec<usize>> = (0..ex.len()).map(|i| vec![i]).collect();
    let padded = cost(&units, &lengths, micro_batch_size, order);
    let packed = cost(&first_fit_decreasing(&lengths, max_len), &lengths, micro_batch_size, order);
    DatasetStats {
        rows: ex.len(),
        skipped: ds.skipped.len(),
        cut: ex.iter().filter(|e| e.cut_from.is_some()).count(),
        images: ex.iter().map(|e| e.images.len()).sum(),
        tokens: lengths.iter().sum(),
        image_tokens: ex.iter().map(|e| e.token_type_ids.iter().filter(|&&t| t == 1).count()).sum(),
        label_tokens: ex.iter().map(|e| e.labels.iter().skip(1).filter(|&&l| l != -100).count()).sum(),
        shortest: lengths.iter().copied().min().unwrap_or(0),
        longest,
        histogram,
        padded,
        packed,
        micro_batch_size,
        max_len,
    }
}

fn cost(units: &[Vec<usize>], lengths: &[usize], b: usize, order: &dyn Fn(usize) -> Vec<usize>) -> BatchCost {
    let len = |u: usize| units[u].iter().map(|&i| lengths[i]).sum::<usize>();
    let ordered = order(units.len());
    let mut c = BatchCost { sequences: units.len(), micro_batches: 0, slots: 0, tokens: 0 };
    for batch in ordered.chunks(b.max(1)) {
        let longest = batch.iter().map(|&u| len(u)).max().unwrap_or(0);
        c.micro_batches += 1;
        c.slots += longest * batch.len();
        c.tokens += batch.iter().map(|&u| len(u)).sum::<usize>();
    }
    c
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let share = |n: usize| pct(n as f64 / self.tokens.max(1) as f64);
        writeln!(
            f,
            "rows: {} used, {} skipped, {} cut to max_len {}",
            self.rows, self.skipped, self.cut, self.max_len
        )?;
        writeln!(f, "images: {}", self.images)?;
        writeln!(
            f,
            "tokens: {} ({} image tokens, {}; {} trained on, {})",
            self.tokens,
            self.image_tokens,
            share(self.image_tokens),
            self.label_tokens,
            share(self.label_tokens)
        )?;
        writeln!(
            f,
            "row length: {} to {} tokens, mean {:.1}",
            self.shortest,
            self.longest,
            self.tokens as f64 / self.rows.max(1) as f64
        )?;
        let most = self.histogram.iter().map(|h| h.2).max().unwrap_or(0).max(1);
        for (from, to, rows) in &self.histogram {
            let bar = "#".repeat((rows * 40).div_ceil(most));
            writeln!(f, "  {from:>6} - {:<6} {rows:>7}  {bar}", to - 1)?;
        }
        writeln!(f, "one epoch in micro-batches of {} (the training order):", self.micro_batch_size)?;
        for (name, c) in [("padded", &self.padded), ("packed", &self.packed)] {
            writeln!(
                f,
                "  {name}: {} sequences in {} micro-batches, {} token slots, {} padding",
                c.sequences,
                c.micro_batches,
                c.slots,
                pct(c.padding())
            )?;
        }
        Ok(())
    }
}

/// `ex` as text: each run of image soft tokens as one `<image>×N`, special tokens written
/// out, and the tokens trained on (those a label predicts) between `«` and `»`.
pub fn render_trained(processor: &Processor, ex: &Example) -> Result<String> {
    let t = &processor.tokenizer;
    let trained = |i: usize| i > 0 && ex.labels[i] != -100;
    let mut out = String::new();
    let mut i = 0;
    while i < ex.input_ids.len() {
        let on = trained(i);
        let image = ex.input_ids[i] == t.image_id;
        let mut j = i + 1;
        while j < ex.input_ids.len() && trained(j) == on && (ex.input_ids[j] == t.image_id) == image {
            j += 1;
        }
        let text = if image {
            format!("{}×{}", t.decode(&ex.input_ids[i..i + 1], false)?, j - i)
        } else {
            t.decode(&ex.input_ids[i..j], false)?
        };
        if on {
            out.push('«');
            out.push_str(&text);
            out.push('»');
        } else {
            out.push_str(&text);
        }
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::RowAt;

    fn example(len: usize, trained_from: usize) -> Example {
        Example {
            input_ids: (0..len as u32).collect(),
            labels: (0..len as i64).map(|i| if i as usize >= trained_from { i } else { -100 }).collect(),
            token_type_ids: (0..len).map(|i| u8::from(i == 1)).collect(),
            images: Vec::new(),
            cut_from: None,
        }
    }

    #[test]
    fn padding_and_packing_costs_follow_the_order_given() {
        let examples = vec![example(10, 5), example(30, 0), example(20, 19), example(5, 4)];
        let ds = Dataset {
            path: "d.jsonl".into(),
            files: vec!["d.jsonl".into()],
            rows: (1..=4).map(RowAt::Line).collect(),
            examples,
            skipped: Vec::new(),
        };
        let s = dataset_stats(&ds, 40, 2, &|n| (0..n).rev().collect());
        assert_eq!((s.tokens, s.image_tokens, s.shortest, s.longest), (65, 4, 5, 30));
        // Trained: 5 of row 0, 29 of row 1 (its first token is never predicted), 1, 1.
        assert_eq!(s.label_tokens, 5 + 29 + 1 + 1);
        // Reversed order: rows (3, 2) pad to 20, rows (1, 0) to 30.
        assert_eq!(s.padded, BatchCost { sequences: 4, micro_batches: 2, slots: 40 + 60, tokens: 65 });
        // Packed into 40: [30, 10], [20, 5]; reversed: one micro-batch of both, padded to 40.
        assert_eq!(s.packed, BatchCost { sequences: 2, micro_batches: 1, slots: 80, tokens: 65 });
        assert_eq!(s.histogram, vec![(0, 16, 2), (16, 32, 2)]);
        assert!((s.padded.padding() - 0.35).abs() < 1e-12);
        let text = s.to_string();
        assert!(text.contains("35.0% padding") && text.contains("18.8% padding"), "{text}");
    }
}
