#!/usr/bin/env bash
# The official `openai` Python client for crates/cria-server/tests/serve_openai.rs, in a venv under
# target/ (PyPI only). Idempotent: does nothing when the venv already has it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
venv=target/openai-venv
if ! "$venv/bin/python" -c "import openai" 2> /dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "openai>=1.40"
fi
