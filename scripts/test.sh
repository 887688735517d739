#!/usr/bin/env bash
# The whole test suite: sets everything up, then runs unit, integration and chaos tests.
# Two pytest processes share the test files (pytest-xdist, a file stays in one process);
# each starts its own Kafka broker (a free port, a fresh data folder) and stops it. Set
# STREAMSERVE_BROKER to test against a broker of your own. Extra arguments go to pytest
# (-n 0 runs in one process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
started=$(date +%s)
set +e
.venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile --durations=25 "$@"
rc=$?
set -e
echo "test suite finished in $(( $(date +%s) - started )) s" >&2
if [[ $rc -eq 5 ]]; then
    echo "test: error: pytest collected no tests" >&2
    exit 1
fi
exit $rc
