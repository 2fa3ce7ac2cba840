//! Fine-tuning pieces that need no model: AdamW, learning-rate schedules, gradient clipping and
//! LoRA initialisation (`optim`), and training data read from JSONL and rendered into token ids
//! with a loss mask (`data`).
pub mod data;
pub mod optim;
