//! cria-tokenizer: LLaMA-family tokenizers (SentencePiece BPE, LLaMA-3 BPE, GPT-2 byte-level BPE),
//! built from GGUF metadata or a Hugging Face tokenizer.json, matching llama.cpp token for token.
