//! Which conversations share a packed row: first-fit decreasing over their lengths, so rows of up
//! to `max_len` tokens fill with as little padding as the greedy bound allows (at most 11/9 of
//! the optimal number of rows, plus one). A conversation is never split. Not the collation
//! (`collate.rs`), not the attention that keeps packed conversations apart (the model's).

/// Groups item indices into bins whose summed `lengths` stay within `max_len`. Bins come in the
/// order they were opened (longest first); a bin lists its items in the order they were placed.
/// An item longer than `max_len` gets a bin of its own.
pub fn first_fit_decreasing(lengths: &[usize], max_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut room: Vec<usize> = Vec::new();
    for i in order {
        let len = lengths[i];
        match room.iter().position(|&r| r >= len) {
            Some(b) => {
                bins[b].push(i);
                room[b] -= len;
            }
            None => {
                bins.push(vec![i]);
                room.push(max_len.saturating_sub(len));
            }
        }
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_item_lands_once_and_bins_fit(lengths in proptest::collection::vec(1usize..40, 0..60), max_len in 1usize..64) {
            let bins = first_fit_decreasing(&lengths, max_len);
            let mut seen: Vec<usize> = bins.iter().flatten().copied().collect();
            seen.sort();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for b in &bins {
                let sum: usize = b.iter().map(|&i| lengths[i]).sum();
                prop_assert!(sum <= max_len || b.len() == 1, "bin {:?} holds {} > {}", b, sum, max_len);
            }
            // First fit: no later bin's first item would have fitted in an earlier bin when it
            // was placed, so no two bins together fit in one (else the second would not exist).
            let sums: Vec<usize> = bins.iter().map(|b| b.iter().map(|&i| lengths[i]).sum()).collect();
            for (i, sum) in sums.iter().enumerate() {
                for later in &bins[i + 1..] {
                    prop_assert!(sum + lengths[later[0]] > max_len || *sum > max_len);
                }
            }
        }
    }

    #[test]
    fn packs_long_first() {
        assert_eq!(first_fit_decreasing(&[3, 8, 5, 2, 7], 10), vec![vec![1, 3], vec![4, 0], vec![2]]);
        assert_eq!(first_fit_decreasing(&[12, 1], 10), vec![vec![0], vec![1]]);
    }
}
