#!/usr/bin/env bash
# Conductor side by side with Celery + Redis and the no-queue ceiling, in one interleaved run (issue 13).
#   bash bench/peers/run.sh [--table]       (from anywhere; measures the tree this script is in)
# Knobs (env): RUNS=3 N=1000 N_BIG=5000 CONC=2 W4_N=200 W3=0 SYSTEMS="celery ceiling conductor" (+ rq)
#              PEERBENCH_SCRATCH=/tmp/conductor-peers  PEERBENCH_REDIS_PORT=<a free port>
# Installs redis-server and etcd with apt if missing, makes two venvs under $PEERBENCH_SCRATCH (the
# peers' from requirements.txt; cvenv with this project installed in editable mode, so the
# conductors run this tree's code as it is now), starts its own redis-server on loopback without
# persistence, runs bench/peers/driver.py, and stops redis by its PID. stdout: one JSON object
# (or the table with --table); stderr: progress and the table. Writes only under $PEERBENCH_SCRATCH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export PEERBENCH_SCRATCH="${PEERBENCH_SCRATCH:-/tmp/conductor-peers}"
VENV="$PEERBENCH_SCRATCH/venv"
CVENV="$PEERBENCH_SCRATCH/cvenv"
export PEERBENCH_CONDUCTOR_PY="$CVENV/bin/python"
mkdir -p "$PEERBENCH_SCRATCH/logs" "$PEERBENCH_SCRATCH/results" "$PEERBENCH_SCRATCH/redis"

for arg in "$@"; do
  [ "$arg" = --table ] || { echo "run.sh: unknown argument '$arg' (only --table)" >&2; exit 2; }
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian package)" >&2
  as_root apt-get install -y redis-server >/dev/null
fi
if ! command -v "${PEERBENCH_ETCD_BIN:-etcd}" >/dev/null; then
  echo "installing etcd-server (Debian package)" >&2
  as_root apt-get install -y etcd-server >/dev/null
fi

# The peers' venv: rebuilt when requirements.txt changes.
req_sum="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$req_sum" ]; then
  echo "creating venv $VENV (Celery, RQ, redis)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
  echo "$req_sum" > "$VENV/.requirements"
fi

# Conductor's venv: an editable install of $ROOT, redone when $ROOT or its pyproject.toml changes.
proj_sum="$ROOT $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$CVENV/.project" 2>/dev/null)" != "$proj_sum" ]; then
  echo "creating venv $CVENV (Conductor from $ROOT, editable)" >&2
  rm -rf "$CVENV"
  python3 -m venv "$CVENV"
  "$CVENV/bin/pip" install -q -e "$ROOT"
  echo "$proj_sum" > "$CVENV/.project"
fi
used="$("$CVENV/bin/python" -c 'import conductor, os; print(os.path.dirname(os.path.abspath(conductor.__file__)))')"
if [ "$used" != "$ROOT/conductor" ]; then
  echo "$CVENV imports conductor from $used, not from $ROOT/conductor; remove $CVENV and re-run" >&2
  exit 2
fi

port_free() { "$VENV/bin/python" -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $1)) == 0)"; }
if [ -z "${PEERBENCH_REDIS_PORT:-}" ]; then
  PEERBENCH_REDIS_PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
elif ! port_free "$PEERBENCH_REDIS_PORT"; then
  echo "port $PEERBENCH_REDIS_PORT is already in use; not touching it. Set another PEERBENCH_REDIS_PORT." >&2
  exit 2
fi
export PEERBENCH_REDIS_PORT

redis-server --port "$PEERBENCH_REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
  --save '' --appendonly no --dir "$PEERBENCH_SCRATCH/redis" --daemonize no \
  >"$PEERBENCH_SCRATCH/logs/redis-server.log" 2>&1 &
REDIS_PID=$!
cleanup() {
  if kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  fi
  # the conductors' task logs on disk are kept until here (see conductor_common.py)
  rm -rf "$PEERBENCH_SCRATCH/cnodes"
}
trap cleanup EXIT INT TERM
for _ in $(seq 100); do
  redis-cli -p "$PEERBENCH_REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$PEERBENCH_REDIS_PORT" ping >/dev/null

"$VENV/bin/python" "$HERE/driver.py" "$@"
