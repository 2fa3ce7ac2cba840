#!/usr/bin/env bash
# The aarch64 build under qemu-user on an x86-64 Debian/Ubuntu machine: the kernel tests (NEON
# kernels against their scalar twins, bit for bit) and the model tests (logits against the
# transformers / llama.cpp fixtures, batching, no allocation in the token loop), twice: on an
# emulated core with the dot-product extension (the `neon-dotprod` kernels) and on a Cortex-A53
# without it (the baseline `neon` ones). Installs the cross toolchain first when missing (apt-get
# needs root or sudo; the Rust target comes from rustup).
# Usage: scripts/test-aarch64.sh [extra cargo test args, e.g. --test neon]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
    || [ ! -d /usr/aarch64-linux-gnu/lib ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/aarch64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Tests reading reference data find it through CRIA_REF_DIR (qemu passes the environment on).
export CRIA_REF_DIR="${CRIA_REF_DIR:-$PWD/ref}"
# -cpu max (dot-product extension): the kernels and the model tests; -cpu cortex-a53 (none): the
# kernel tests, which cover every path the missing extension changes (the model tests over them
# would repeat the same kernels at qemu speed: 3.5 minutes of CI).
echo "== aarch64 tests on qemu -cpu max"
QEMU_CPU=max cargo test --profile ci --target aarch64-unknown-linux-gnu \
    -p cria-kernels -p cria-model "$@"
echo "== aarch64 tests on qemu -cpu cortex-a53"
QEMU_CPU=cortex-a53 cargo test --profile ci --target aarch64-unknown-linux-gnu -p cria-kernels "$@"
