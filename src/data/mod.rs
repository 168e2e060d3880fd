//! Datasets, tokenizers, chat templates and loss masks.
//!
//! - [`tokenizer`]: a HF-equivalent tokenizer from `tokenizer.json` or from GGUF metadata.
//! - [`template`]: chat templates rendered with minijinja, as transformers renders them.
//! - [`dataset`]: OpenAI `messages` JSONL reading and validation.
//! - [`mask`]: which tokens of a conversation are loss targets.

pub mod dataset;
pub mod mask;
pub mod template;
pub mod tokenizer;

pub use dataset::{Conversation, Message, Role};
pub use mask::{LossOn, TokenizedExample};
pub use template::ChatTemplate;
pub use tokenizer::ChatTokenizer;
