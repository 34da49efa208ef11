#!/usr/bin/env bash
# Installs TensorBoard (PyPI) into target/tensorboard-venv: the independent reader the tests use
# to check the event files `lapidary train --report-to tensorboard` writes. A test tool, not a
# dependency: the test that needs it says "skipped" when it is absent (and fails under CI=true).
# Needs python3 with venv and access to PyPI; does nothing when the reader is there.
set -euo pipefail
venv="$(dirname "$0")/../../target/tensorboard-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tensorboard" 2>/dev/null; then
  echo "tensorboard: $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "tensorboard==2.21.0"
"$venv/bin/python" -c "import tensorboard; print('tensorboard', tensorboard.__version__, '$venv')"
