#!/usr/bin/env bash
# Set up a development checkout of streamserve; safe to run again (fast when done).
#
#   scripts/setup.sh
#
# 1. .venv in the repository root (python3, 3.11 or newer; PYTHON=... picks another)
# 2. pip install -e '.[test]' into it, again only when pyproject.toml changed
# 3. kcat (Debian package, via apt-get) when it is not on PATH
# 3b. promtool and prometheus (Debian package prometheus) when not on PATH: the tests
#    check and unit-test the alerting rules with promtool and scrape a worker with a
#    Prometheus server of their own (the package's system service is not used)
# 4. the local Kafka broker's jars into $STREAMSERVE_HOME/kafka/libs (default
#    .streamserve), fetched once with Maven; skipped when STREAMSERVE_BROKER names
#    a broker of your own (e.g. `docker compose up`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
# Run a noisy command quietly; show its output only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "failed: $*"
    fi
}

# 1. virtual environment -------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer (or set PYTHON=...)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$PYTHON" -V 2>&1) is too old: streamserve needs Python 3.11 or newer (set PYTHON=...)"
    say "creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv .venv
fi

# 2. the package, reinstalled only when pyproject.toml changed -------------------
stamp=.venv/.streamserve-pyproject.sha256
want=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
have=$(cat "$stamp" 2>/dev/null || true)
if [[ "$want" != "$have" || ! -x .venv/bin/streamserve ]]; then
    say "installing streamserve and its test tools into .venv (pip install -e '.[test]')"
    quiet .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    printf '%s\n' "$want" > "$stamp"
else
    say ".venv is up to date"
fi

# apt_install PACKAGE WHAT: install a Debian package with apt-get (as root, or with sudo).
apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "installing $2 needs root: run as root, or install sudo, or install $2 yourself"
        sudo=(sudo)
    fi
    say "installing $2 (apt-get, package $1)"
    quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1"
}

# 3. kcat, for looking at topics by hand ------------------------------------------
if command -v kcat >/dev/null; then
    say "kcat is installed"
elif command -v apt-get >/dev/null; then
    apt_install kcat kcat
else
    say "warning: kcat is not installed and apt-get is missing: install kcat yourself (e.g. brew install kcat)"
fi

# 3b. promtool and prometheus, for the rules' tests ----------------------------------
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    say "promtool and prometheus are installed"
elif command -v apt-get >/dev/null; then
    apt_install prometheus "Prometheus (promtool and prometheus)"
else
    say "warning: promtool is not installed and apt-get is missing: install Prometheus yourself (e.g. brew install prometheus); the rules' tests skip without it"
fi

# 4. the local Kafka broker's jars ------------------------------------------------
if [[ -n "${STREAMSERVE_BROKER:-}" ]]; then
    say "STREAMSERVE_BROKER=$STREAMSERVE_BROKER: skipping the local broker's jars"
else
    .venv/bin/python - <<'PY' || exit 1
import sys

from agents.dev.broker import BrokerError, LocalBroker
from pipeline.config import ConfigError, Settings

try:
    settings = Settings.from_env()
    broker = LocalBroker(settings.kafka.home, settings.kafka.local_broker_port)
    broker.install()
except (BrokerError, ConfigError) as error:
    sys.exit(f"setup: error: {error}")
print(f"setup: Kafka broker jars are in {broker.libs}", file=sys.stderr)
PY
fi

say "done: try .venv/bin/streamserve --help"
