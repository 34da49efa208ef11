//! lapidary-data: tokenizer, Gemma 3 chat template, image preprocessing, JSONL datasets and the
//! collator that turns rows into padded batches with labels and token_type_ids.
//!
//! Not built yet: this crate is an empty library until the data pipeline lands.
