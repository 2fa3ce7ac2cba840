//! cria-model
