//! The mask and the visible ranges as the fused (flash) kernels evaluate them, in cube code: the
//! per-pair test of [`AttentionMask::allows`](super::AttentionMask::allows) and, for a tile of
//! four queries (or four keys), the smallest index range outside which nothing is visible, so the
//! kernels skip whole spans (the future of a causal row, keys before a sliding window, other
//! segments) without ever storing a mask. Not the materialized softmax (that is `softmax.rs`).

use cubecl::prelude::*;

/// The mask's switches, fixed per kernel instantiation (a comptime argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MaskFlags {
    pub causal: bool,
    pub use_window: bool,
    pub use_blocks: bool,
    pub use_keep: bool,
    pub use_segments: bool,
}

impl MaskFlags {
    pub(super) fn of(mask: &super::AttentionMask) -> Self {
        MaskFlags {
            causal: mask.causal,
            use_window: mask.window.is_some(),
            use_blocks: mask.blocks.is_some(),
            use_keep: mask.key_padding.is_some(),
            use_segments: mask.segments.is_some(),
        }
    }
}

/// Block id (or segment id) of absolute position `q` of row `b`: the id at `q` when `q < s_len`,
/// `none` otherwise (a query past the keys has no block).
#[cube]
pub(super) fn id_at(ids: &[f32], b: usize, q: usize, s_len: usize, none: f32) -> f32 {
    let mut v = none;
    if q < s_len {
        v = ids[b * s_len + q];
    }
    v
}

/// Whether query at absolute position `q` (block id `bq`, segment id `sq`) sees key `k` of row `b`.
#[cube]
pub(super) fn visible(
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    b: usize,
    q: usize,
    k: usize,
    bq: f32,
    sq: f32,
    s_len: usize,
    window: usize,
    #[comptime] flags: MaskFlags,
) -> bool {
    let mut ok = true;
    if flags.causal {
        ok = k <= q;
    }
    if flags.use_window {
        ok = ok && q < k + window;
    }
    if flags.use_blocks {
        ok = ok || (bq > 0.0 && bq == blocks[b * s_len + k]);
    }
    if flags.use_keep {
        ok = ok && keep[b * s_len + k] > 0.0;
    }
    if flags.use_segments {
        ok = ok && sq == segments[b * s_len + k];
    }
    ok
}

/// Whether `x` equals one of four ids (ids `<= 0` never match when `positive_only`).
#[cube]
fn matches4(x: f32, a: f32, b: f32, c: f32, d: f32, #[comptime] positive_only: bool) -> bool {
    let hit = x == a || x == b || x == c || x == d;
    if positive_only { hit && x > 0.0 } else { hit }
}

/// First index in `[0, end)` whose id (row `b`, length `len`) matches one of four ids, else `end`.
#[cube]
pub(super) fn first_match(
    ids: &[f32],
    b: usize,
    len: usize,
    end: usize,
    a: f32,
    bb: f32,
    c: f32,
    d: f32,
    #[comptime] positive_only: bool,
) -> usize {
    let mut i = 0usize;
    let mut found = end;
    while i < end {
        if matches4(ids[b * len + i], a, bb, c, d, positive_only) {
            found = i;
            break;
        }
        i += 1;
    }
    found
}

/// One past the last index in `[start, len)` whose id matches one of four ids, else `start`.
#[cube]
pub(super) fn last_match_end(
    ids: &[f32],
    b: usize,
    len: usize,
    start: usize,
    a: f32,
    bb: f32,
    c: f32,
    d: f32,
    #[comptime] positive_only: bool,
) -> usize {
    let mut i = len;
    let mut found = start;
    while i > start {
        if matches4(ids[b * len + i - 1], a, bb, c, d, positive_only) {
            found = i;
            break;
        }
        i -= 1;
    }
    found
}

/// Start of the keys a tile of queries (absolute positions `qa..=qz`, block ids `bq*`, segment
/// ids `sq*`) can see: the sliding window's start, pulled back to the first key of a shared image
/// block, pushed forward to the first key of a shared segment.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn key_lo(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    qa: usize,
    s_len: usize,
    window: usize,
    bq0: f32,
    bq1: f32,
    bq2: f32,
    bq3: f32,
    sq0: f32,
    sq1: f32,
    sq2: f32,
    sq3: f32,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut lo = 0usize;
    if flags.use_window && qa + 1 > window {
        lo = qa + 1 - window;
    }
    if flags.use_blocks && lo > 0 {
        lo = min(lo, first_match(blocks, b, s_len, lo, bq0, bq1, bq2, bq3, true));
    }
    if flags.use_segments {
        lo = max(lo, first_match(segments, b, s_len, s_len, sq0, sq1, sq2, sq3, false));
    }
    lo
}

/// End (exclusive) of the keys the same tile can see: past the last query when causal, pushed
/// out to the end of a shared image block, pulled in to the end of a shared segment.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn key_hi(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    qz: usize,
    s_len: usize,
    bq0: f32,
    bq1: f32,
    bq2: f32,
    bq3: f32,
    sq0: f32,
    sq1: f32,
    sq2: f32,
    sq3: f32,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut hi = s_len;
    if flags.causal {
        hi = min(s_len, qz + 1);
        if flags.use_blocks && hi < s_len {
            hi = max(hi, last_match_end(blocks, b, s_len, hi, bq0, bq1, bq2, bq3, true));
        }
    }
    if flags.use_segments {
        hi = min(hi, last_match_end(segments, b, s_len, 0, sq0, sq1, sq2, sq3, false));
    }
    hi
}

/// Start (absolute) of the queries a tile of keys (`ka..=kz`, block ids `bk*`, segment ids `sk*`)
/// is seen by, given the queries span `[q_first, q_end)`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn query_lo(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    ka: usize,
    q_first: usize,
    s_len: usize,
    bk0: f32,
    bk1: f32,
    bk2: f32,
    bk3: f32,
    sk0: f32,
    sk1: f32,
    sk2: f32,
    sk3: f32,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut lo = q_first;
    if flags.causal && ka > lo {
        lo = ka;
        if flags.use_blocks {
            let end = min(lo, s_len);
            lo = min(lo, first_match(blocks, b, s_len, end, bk0, bk1, bk2, bk3, true));
            lo = max(lo, q_first);
        }
    }
    if flags.use_segments {
        lo = max(lo, first_match(segments, b, s_len, s_len, sk0, sk1, sk2, sk3, false));
    }
    lo
}

/// End (absolute, exclusive) of the queries the same tile of keys is seen by.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn query_hi(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    kz: usize,
    q_end: usize,
    s_len: usize,
    window: usize,
    bk0: f32,
    bk1: f32,
    bk2: f32,
    bk3: f32,
    sk0: f32,
    sk1: f32,
    sk2: f32,
    sk3: f32,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut hi = q_end;
    if flags.use_window && kz + window < hi {
        hi = kz + window;
        if flags.use_blocks {
            let start = min(hi, s_len);
            hi = max(hi, last_match_end(blocks, b, s_len, start, bk0, bk1, bk2, bk3, true));
            hi = min(hi, q_end);
        }
    }
    if flags.use_segments {
        hi = min(hi, last_match_end(segments, b, s_len, 0, sk0, sk1, sk2, sk3, false));
    }
    hi
}
