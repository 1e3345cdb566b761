#!/usr/bin/env bash
# Install everything the test suite needs on a clean machine, then run ruff, mypy and pytest twice:
# on SQLite (with the PostgreSQL integration tests) and on PostgreSQL (every other test, `--db postgres`).
# The two passes run side by side, each on its own temporary databases.
# Usage: bash scripts/test.sh [pytest args...]   (CI runs this through .ci/run)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

have_pg_server() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    local bindir
    for bindir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$bindir/initdb" && -x "$bindir/pg_ctl" ]]; then
            return 0
        fi
    done
    return 1
}

install_pg_server() {
    # The integration tests start their own throwaway server; only the binaries are needed.
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "test.sh: PostgreSQL server not found and neither root nor passwordless sudo is available;" >&2
            echo "test.sh: the PostgreSQL integration tests will be skipped (they fail when CI=true)." >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: PostgreSQL server not found and apt-get is unavailable; install PostgreSQL yourself;" >&2
        echo "test.sh: the PostgreSQL integration tests will be skipped (they fail when CI=true)." >&2
        return 0
    fi
    echo "test.sh: installing the PostgreSQL server with apt-get" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
}

if ! have_pg_server; then
    install_pg_server
fi

if command -v python >/dev/null 2>&1; then
    PYTHON=python
else
    PYTHON=python3
fi

"$PYTHON" -m pip install -q -e '.[dev]'

"$PYTHON" -m ruff check .
"$PYTHON" -m mypy

# Exit code 5 ("no tests collected") is a failure too.
pg_log="$(mktemp)"
trap 'rm -f "$pg_log"' EXIT
"$PYTHON" -m pytest --db postgres -m "not postgres" "$@" >"$pg_log" 2>&1 &
pg_pid=$!
set +e
echo "== pytest on SQLite (and the PostgreSQL integration tests) =="
"$PYTHON" -m pytest "$@"
sqlite_rc=$?
wait "$pg_pid"
pg_rc=$?
set -e
echo "== pytest on PostgreSQL (--db postgres) =="
cat "$pg_log"
if [[ $sqlite_rc -ne 0 || $pg_rc -ne 0 ]]; then
    echo "test.sh: pytest failed (SQLite pass exit $sqlite_rc, PostgreSQL pass exit $pg_rc)" >&2
    exit 1
fi
