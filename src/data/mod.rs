//! Datasets, tokenizers, chat templates, loss masks, preparation and batching.
//!
//! - [`tokenizer`]: a HF-equivalent tokenizer from `tokenizer.json` or from GGUF metadata.
//! - [`template`]: chat templates rendered with minijinja, as transformers renders them.
//! - [`dataset`]: OpenAI `messages` JSONL reading and validation.
//! - [`formats`]: the dataset formats (OpenAI, ShareGPT, Alpaca, ChatML, DPO ...), read and written.
//! - [`stats`]: counts, turns and token lengths with percentiles, a length histogram (`data stats`).
//! - [`split`]: a file into training and validation files, conversations kept whole (`data split`).
//! - [`validate`]: every problem of a dataset file, by line and field (`data validate`).
//! - [`mask`]: which tokens of a conversation are loss targets.
//! - [`prepare`]: a run's training and validation examples, fitted to the sequence length.
//! - [`pairs`]: preference pairs for DPO: their JSONL shapes, tokenization and fitting.
//! - [`pack`]: padding-free packing of conversations into rows (first-fit-decreasing).
//! - [`batch`]: right-padded micro-batches (or packed rows) and the rows that predict targets.

pub mod batch;
pub mod dataset;
pub mod formats;
pub mod mask;
pub mod pack;
pub mod pairs;
pub mod prepare;
pub mod split;
pub mod stats;
pub mod template;
pub mod tokenizer;
pub mod validate;

pub use batch::{collate, collate_packed, collate_pairs, MicroBatch, PairBatch};
pub use dataset::{Conversation, Message, Role};
pub use mask::{LossOn, TokenizedExample};
pub use pairs::{PreferencePair, TokenizedPair};
pub use prepare::{
    prepare_dataset, prepare_pairs, FitReport, HeldOut, PrepareOptions, PreparedData, PreparedPairs,
};
pub use template::ChatTemplate;
pub use tokenizer::ChatTokenizer;
