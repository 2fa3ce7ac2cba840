//! NumPy .npy reading and writing (float32 logits).
