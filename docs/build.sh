#!/usr/bin/env bash
# Build the HTML docs; any Sphinx warning fails the build.
# Usage: bash docs/build.sh   (needs the docs extra: pip install -e '.[docs]'; uses $PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
echo "docs built: docs/_build/html/index.html"
