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
# Skipped under qemu, and run on x86 only: the model tests that load the real 135M SmolLM2 (PEFT
# adapters on it; the reference backend, a second Backend written in plain Rust, which dequantizes
# it to f32). They check model code that is the same on every architecture; the NEON kernels
# beneath them are checked here against their scalar twins, on SmolLM2's own weights too
# (kernels.rs). At qemu speed they made most of the 3.4 minutes their two files took.
qemu_skip=(smollm2_peft_adapters_give_peft_logits reference_backend_gives_the_cpu_backends_logits
    reference_backend_batches_sequences_with_a_copied_prefix reference_backend_errors_are_returned
    out_of_memory_is_an_error_not_a_panic)
echo "== aarch64 tests on qemu -cpu max (run on x86 only: ${qemu_skip[*]})"
QEMU_CPU=max cargo test --profile ci --target aarch64-unknown-linux-gnu \
    -p cria-kernels -p cria-model "$@" -- --exact "${qemu_skip[@]/#/--skip=}"
echo "== aarch64 tests on qemu -cpu cortex-a53"
QEMU_CPU=cortex-a53 cargo test --profile ci --target aarch64-unknown-linux-gnu -p cria-kernels "$@"
