mod fetch;
mod npy;

fn main() {}
