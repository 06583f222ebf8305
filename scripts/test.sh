#!/usr/bin/env bash
# Run the test suite against the real local stack; stop the stack afterwards only if
# this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."

started=0
if ! bash scripts/stack.sh status >/dev/null 2>&1; then
  started=1
fi
if ! bash scripts/stack.sh up; then
  echo "test: the local Kafka/Redis stack did not start; see .stack/logs/ (integration tests need it)" >&2
  exit 1
fi
cleanup() {
  if [ "$started" = 1 ]; then bash scripts/stack.sh down || true; fi
}
trap cleanup EXIT

# The dashboard's browser test drives Debian's headless Chromium.
bash scripts/browser.sh

.venv/bin/python -m pytest "$@"
