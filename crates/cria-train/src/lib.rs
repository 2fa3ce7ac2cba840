pub mod data;
pub mod optim;
