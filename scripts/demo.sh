#!/usr/bin/env bash
# The main job: sets everything up, then runs `streamserve demo` (a local broker starts by
# itself unless STREAMSERVE_BROKER names one). Extra arguments go to `streamserve demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/streamserve demo "$@"
