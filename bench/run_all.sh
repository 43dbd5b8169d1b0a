#!/usr/bin/env bash
# Run every benchmark; print their JSON results, one line each, on stdout (progress on stderr).
# PYTHON picks the interpreter (default: the project's .venv, else python3). Extra arguments are
# not passed on: run the scripts one by one for options. Exit status: 1 if any benchmark failed.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then PYTHON="$here/../.venv/bin/python"; else PYTHON=python3; fi
fi
status=0
for bench in throughput fanout latency failover; do
    echo "== $bench" >&2
    if ! "$PYTHON" "$here/$bench.py"; then
        echo "== $bench FAILED" >&2
        status=1
    fi
done
exit $status
