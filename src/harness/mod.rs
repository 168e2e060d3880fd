//! The evaluation harness: candidates answer held-out prompts, a judge compares them pairwise in
//! both orders and scores traits, and the statistics turn verdicts into win rates and ratings
//! with confidence intervals. It calls the chat providers, so it sits above them; the masked
//! scoring that training also uses stays in `eval`.

pub mod stats;
pub mod verdict;
