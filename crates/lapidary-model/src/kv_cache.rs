//! [`KvCache`]: the keys and values of every decoder layer for the tokens a generation has seen,
//! on the device, the same for every family: a layer joins each call's keys and values to its
//! entry ([`append`]) and attends over the result; layers that reuse another layer's keys and
//! values keep no entry. Not the attention nor the masks (each family's decoder).

use lapidary_core::{Error, Result, Tensor};
use lapidary_kernels::gather::concat;

/// One layer's cached keys and values, `[B, kv heads, T, head width]` each; `None` before the
/// first call (or for a layer that caches nothing).
pub type LayerCache = Option<(Tensor, Tensor)>;

/// Keys and values of every decoder layer for the tokens seen so far.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![None; layers], len: 0 }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The layers' entries, for a pass over `layers` decoder layers (an error for a cache made
    /// for another count).
    pub fn layers_mut(&mut self, layers: usize) -> Result<&mut [LayerCache]> {
        let cached = self.layers.len();
        if cached != layers {
            return Err(Error::invalid(format!("KV cache for {cached} layers used with a model of {layers}")));
        }
        Ok(&mut self.layers)
    }

    /// Records that a pass added `tokens` tokens.
    pub fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

/// Joins `k` and `v` (this call's, `[B, kv heads, T, head width]`) to the layer's entry along the
/// tokens; returns the keys and values of every token so far (also the new entry).
pub fn append(entry: &mut LayerCache, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    let (ka, va) = match entry.take() {
        None => (k.clone(), v.clone()),
        Some((pk, pv)) => (concat(&pk, k, 2)?, concat(&pv, v, 2)?),
    };
    *entry = Some((ka.clone(), va.clone()));
    Ok((ka, va))
}
