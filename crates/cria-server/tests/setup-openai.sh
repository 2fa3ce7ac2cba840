#!/usr/bin/env bash
# The official `openai` Python client for crates/cria-server/tests/serve_openai.rs, in a venv under
# target/ (PyPI only; never the system Python), every package at the exact version of
# openai-requirements.txt. Idempotent: does nothing when the venv already holds those pins.
set -euo pipefail
cd "$(dirname "$0")/../../.."
venv=target/openai-venv
req=crates/cria-server/tests/openai-requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" || ! "$venv/bin/python" -c "import openai" 2> /dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi
