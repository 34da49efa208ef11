//! The mask and the visible ranges as the fused (flash) kernels evaluate them, in cube code: the
//! per-pair test of [`AttentionMask::allows`](super::AttentionMask::allows) and, for a tile of
//! [`TILE_ROWS`] queries (or keys), the smallest index range outside which nothing is visible, so
//! the kernels skip whole spans (the future of a causal row, keys before a sliding window, other
//! segments) without ever storing a mask. Not the materialized softmax (that is `softmax.rs`).

use super::flash::NONE;
use cubecl::prelude::*;

/// Rows in a tile of the fused kernels: the query rows (or keys) one unit of the CPU-shaped
/// kernels owns, scored together against a block of keys (or queries), each row's state in
/// registers. The tiled kernels compute their tiles' visible ranges in the same groups.
pub(super) const TILE_ROWS: usize = 4;
/// The last row of a tile.
const LAST: usize = TILE_ROWS - 1;

/// The mask's switches, fixed per kernel instantiation (a comptime argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MaskFlags {
    pub causal: bool,
    pub use_window: bool,
    pub use_blocks: bool,
    /// The window bounds the blocks too (set only with both a window and blocks).
    pub blocks_in_window: bool,
    pub use_keep: bool,
    pub use_segments: bool,
}

impl MaskFlags {
    pub(super) fn of(mask: &super::AttentionMask) -> Self {
        MaskFlags {
            causal: mask.causal,
            use_window: mask.window.is_some(),
            use_blocks: mask.blocks.is_some(),
            blocks_in_window: mask.blocks_in_window && mask.blocks.is_some() && mask.window.is_some(),
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
    if flags.use_window && !flags.blocks_in_window {
        ok = ok && q < k + window;
    }
    if flags.use_blocks {
        ok = ok || (bq > 0.0 && bq == blocks[b * s_len + k]);
    }
    if flags.blocks_in_window {
        ok = ok && q < k + window;
    }
    if flags.use_keep {
        ok = ok && keep[b * s_len + k] > 0.0;
    }
    if flags.use_segments {
        ok = ok && sq == segments[b * s_len + k];
    }
    ok
}

/// Whether every query of tile `q` sees every key of the block `[kb, kb + lanes)`, so that the
/// block needs no mask: inside `[lo, hi)`, before the first query when causal, inside the last
/// query's window, kept by the padding, in the queries' one segment. Image blocks only add
/// keys (inside the window when it bounds them), so they never make it false.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_seen_by_all(
    keep: &[f32],
    segments: &[f32],
    b: usize,
    q: &Tile,
    kb: usize,
    lanes: usize,
    lo: usize,
    hi: usize,
    s_len: usize,
    window: usize,
    #[comptime] flags: MaskFlags,
) -> bool {
    let mut all = kb >= lo && kb + lanes <= hi;
    if flags.causal {
        all = all && kb + lanes <= q.p[0] + 1;
    }
    if flags.use_window {
        all = all && kb + window > q.p[LAST];
    }
    if flags.use_segments {
        all = all && one_segment(&q.s);
    }
    if flags.use_keep || flags.use_segments {
        let mut l = 0usize;
        while all && l < lanes {
            let i = b * s_len + kb + l;
            if flags.use_keep {
                all = keep[i] > 0.0;
            }
            if flags.use_segments {
                all = all && segments[i] == q.s[0];
            }
            l += 1;
        }
    }
    all
}

/// Whether a tile's rows all lie in one segment.
#[cube]
fn one_segment(ids: &Sequence<f32>) -> bool {
    let mut same = true;
    #[unroll]
    for r in 1..TILE_ROWS {
        same = same && ids[r] == ids[0];
    }
    same
}

/// The scores of a tile's rows against one block of keys (keys in lanes), a vector per row.
pub(super) type TileScores<L> = Sequence<Vector<f32, L>>;

/// Masks (sets to `NONE`) the lanes of a block of keys from `kb` that query tile `qt` does not
/// see: outside `[lo, hi)` or refused by the mask.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn mask_keys<L: Size>(
    s: &mut TileScores<L>,
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    b: usize,
    qt: &Tile,
    kb: usize,
    lo: usize,
    hi: usize,
    s_len: usize,
    window: usize,
    #[comptime] flags: MaskFlags,
) {
    let none = f32::new(NONE);
    #[unroll]
    for l in 0..L::value() {
        let kk = kb + l;
        let inside = kk >= lo && kk < hi;
        #[unroll]
        for r in 0..TILE_ROWS {
            if !(inside && visible(blocks, keep, segments, b, qt.p[r], kk, qt.b[r], qt.s[r], s_len, window, flags)) {
                s.index_mut(r).insert(l, none);
            }
        }
    }
}

/// Whether every key of tile `k` is seen by every query of the block at positions
/// `[q0, q0 + lanes)`, so that the block needs no mask: inside `[qa, qz)`, at or after the last
/// key when causal, inside the first key's window, the keys kept by the padding, one segment.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn queries_see_block(
    keep: &[f32],
    segments: &[f32],
    b: usize,
    k: &Tile,
    q0: usize,
    lanes: usize,
    qa: usize,
    qz: usize,
    s_len: usize,
    window: usize,
    #[comptime] flags: MaskFlags,
) -> bool {
    let mut all = q0 >= qa && q0 + lanes <= qz;
    if flags.causal {
        all = all && k.p[LAST] <= q0;
    }
    if flags.use_window {
        all = all && q0 + lanes <= k.p[0] + window;
    }
    if flags.use_keep {
        #[unroll]
        for r in 0..TILE_ROWS {
            all = all && keep[b * s_len + k.p[r]] > 0.0;
        }
    }
    if flags.use_segments {
        all = all && one_segment(&k.s);
        let mut l = 0usize;
        while all && l < lanes {
            all = segments[b * s_len + q0 + l] == k.s[0];
            l += 1;
        }
    }
    all
}

/// Masks (sets to `NONE`) the lanes of a block of queries at positions from `q0` that do not
/// see the keys of tile `k`: outside `[qa, qz)` or refused by the mask.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn mask_queries<L: Size>(
    s: &mut TileScores<L>,
    blocks: &[f32],
    keep: &[f32],
    segments: &[f32],
    b: usize,
    k: &Tile,
    q0: usize,
    qa: usize,
    qz: usize,
    s_len: usize,
    window: usize,
    #[comptime] flags: MaskFlags,
) {
    let none = f32::new(NONE);
    #[unroll]
    for l in 0..L::value() {
        let pos = q0 + l;
        let inside = pos >= qa && pos < qz;
        let bq = id_at(blocks, b, pos, s_len, 0.0);
        let sq = id_at(segments, b, pos, s_len, -1.0);
        #[unroll]
        for r in 0..TILE_ROWS {
            if !(inside && visible(blocks, keep, segments, b, pos, k.p[r], bq, sq, s_len, window, flags)) {
                s.index_mut(r).insert(l, none);
            }
        }
    }
}

/// Whether `x` equals one of a tile's ids (ids `<= 0` never match when `positive_only`).
#[cube]
fn matches_any(x: f32, ids: &Sequence<f32>, #[comptime] positive_only: bool) -> bool {
    let mut hit = false;
    #[unroll]
    for r in 0..TILE_ROWS {
        hit = hit || x == ids[r];
    }
    if positive_only { hit && x > 0.0 } else { hit }
}

/// First index in `[0, end)` whose id (row `b`, length `len`) matches one of a tile's ids, else
/// `end`.
#[cube]
pub(super) fn first_match(
    ids: &[f32],
    b: usize,
    len: usize,
    end: usize,
    tile_ids: &Sequence<f32>,
    #[comptime] positive_only: bool,
) -> usize {
    let mut i = 0usize;
    let mut found = end;
    while i < end {
        if matches_any(ids[b * len + i], tile_ids, positive_only) {
            found = i;
            break;
        }
        i += 1;
    }
    found
}

/// One past the last index in `[start, len)` whose id matches one of a tile's ids, else `start`.
#[cube]
pub(super) fn last_match_end(
    ids: &[f32],
    b: usize,
    len: usize,
    start: usize,
    tile_ids: &Sequence<f32>,
    #[comptime] positive_only: bool,
) -> usize {
    let mut i = len;
    let mut found = start;
    while i > start {
        if matches_any(ids[b * len + i - 1], tile_ids, positive_only) {
            found = i;
            break;
        }
        i -= 1;
    }
    found
}

/// [`TILE_ROWS`] consecutive rows of one head: a tile of queries (or of keys), one entry per row.
/// Rows past the end repeat the last one, so loads stay in bounds; kernels skip their stores.
#[derive(CubeType)]
pub(super) struct Tile {
    /// Flat row indices (rows of `[B, heads, len]`).
    pub r: Sequence<usize>,
    /// Absolute positions.
    pub p: Sequence<usize>,
    /// Block ids at those positions (0: none).
    pub b: Sequence<f32>,
    /// Segment ids at those positions (-1 past the keys).
    pub s: Sequence<f32>,
}

/// The tile of rows `first..first + TILE_ROWS` (of `len`) of the head whose first row is
/// `head_row0`, at absolute positions from `first + offset`, in batch row `b`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn tile(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    head_row0: usize,
    first: usize,
    len: usize,
    offset: usize,
    s_len: usize,
) -> Tile {
    let mut t = Tile { r: Sequence::new(), p: Sequence::new(), b: Sequence::new(), s: Sequence::new() };
    #[unroll]
    for i in 0..TILE_ROWS {
        let row = min(first + i, len - 1);
        t.r.push(head_row0 + row);
        t.p.push(row + offset);
        t.b.push(id_at(blocks, b, row + offset, s_len, 0.0));
        t.s.push(id_at(segments, b, row + offset, s_len, -1.0));
    }
    t
}

/// Start of the keys a tile of queries can see: the sliding window's start, pulled back to the
/// first key of a shared image block (unless the window bounds blocks), pushed forward to the
/// first key of a shared segment.
#[cube]
pub(super) fn key_lo(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    s_len: usize,
    window: usize,
    q: &Tile,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut lo = 0usize;
    if flags.use_window && q.p[0] + 1 > window {
        lo = q.p[0] + 1 - window;
    }
    if flags.use_blocks && !flags.blocks_in_window && lo > 0 {
        lo = min(lo, first_match(blocks, b, s_len, lo, &q.b, true));
    }
    if flags.use_segments {
        lo = max(lo, first_match(segments, b, s_len, s_len, &q.s, false));
    }
    lo
}

/// End (exclusive) of the keys the same tile can see: past the last query when causal, pushed
/// out to the end of a shared image block, pulled in to the end of a shared segment.
#[cube]
pub(super) fn key_hi(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    s_len: usize,
    q: &Tile,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut hi = s_len;
    if flags.causal {
        hi = min(s_len, q.p[LAST] + 1);
        if flags.use_blocks && hi < s_len {
            hi = max(hi, last_match_end(blocks, b, s_len, hi, &q.b, true));
        }
    }
    if flags.use_segments {
        hi = min(hi, last_match_end(segments, b, s_len, 0, &q.s, false));
    }
    hi
}

/// Start (absolute) of the queries a tile of keys is seen by, the queries spanning
/// `[q_first, ..)`.
#[cube]
pub(super) fn query_lo(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    q_first: usize,
    s_len: usize,
    k: &Tile,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut lo = q_first;
    if flags.causal && k.p[0] > lo {
        lo = k.p[0];
        if flags.use_blocks {
            let end = min(lo, s_len);
            lo = min(lo, first_match(blocks, b, s_len, end, &k.b, true));
            lo = max(lo, q_first);
        }
    }
    if flags.use_segments {
        lo = max(lo, first_match(segments, b, s_len, s_len, &k.s, false));
    }
    lo
}

/// End (absolute, exclusive) of the queries the same tile of keys is seen by, the queries
/// ending at `q_end`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn query_hi(
    blocks: &[f32],
    segments: &[f32],
    b: usize,
    q_end: usize,
    s_len: usize,
    window: usize,
    k: &Tile,
    #[comptime] flags: MaskFlags,
) -> usize {
    let mut hi = q_end;
    if flags.use_window && k.p[LAST] + window < hi {
        hi = k.p[LAST] + window;
        if flags.use_blocks && !flags.blocks_in_window {
            let start = min(hi, s_len);
            hi = max(hi, last_match_end(blocks, b, s_len, start, &k.b, true));
            hi = min(hi, q_end);
        }
    }
    if flags.use_segments {
        hi = min(hi, last_match_end(segments, b, s_len, 0, &k.s, false));
    }
    hi
}
