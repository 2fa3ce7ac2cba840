#!/usr/bin/env bash
# Runs the cria-kernels tests for aarch64 (NEON kernels vs their scalar twins) under qemu-user on
# an x86-64 Debian/Ubuntu machine. Installs the cross toolchain first when missing (needs root
# for apt-get). Usage: scripts/test-aarch64.sh [extra cargo test args, e.g. --test neon]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
    || [ ! -d /usr/aarch64-linux-gnu/lib ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update
    $SUDO apt-get install -y qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-aarch64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Tests reading reference data find it through CRIA_REF_DIR (qemu passes the environment on).
export CRIA_REF_DIR="${CRIA_REF_DIR:-$PWD/ref}"
cargo test --release --target aarch64-unknown-linux-gnu -p cria-kernels "$@"
