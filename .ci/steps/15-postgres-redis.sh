#!/usr/bin/env bash
# The whole test suite a second time, on PostgreSQL (psycopg 3) with the Redis
# broker and cache, against the machine's running services (started here only
# when they do not answer). Live stacks get fresh PostgreSQL databases of their
# own (TEST_DATABASE_URL) and Redis queues of their own (tests/live.py).
set -euo pipefail

PG_URL=${CI_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
# A Redis database of its own: tests call cache.clear(), which empties the whole database.
REDIS_URL=${CI_REDIS_URL:-redis://127.0.0.1:6379/9}

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

export DATABASE_URL="$PG_URL/batches_ci"      # pytest-django creates and drops test_batches_ci
export TEST_DATABASE_URL="$PG_URL/postgres"   # LiveStack creates live_<hex> databases through it
export BATCHES_REDIS_URL="$REDIS_URL"
# Tasks the unit tests enqueue go to a queue no cluster reads. On exit it is
# removed, and so is the test database if pytest-django could not drop it (a
# test's thread still held a connection).
export BATCHES_Q_NAME="ci_pytest_$$"

clean_up() {
  .venv/bin/python - <<'PY' || true
import os

import psycopg
import redis

broker = redis.Redis.from_url(os.environ["BATCHES_REDIS_URL"])
keys = list(broker.scan_iter(f"django_q:{os.environ['BATCHES_Q_NAME']}:*"))
if keys:
    broker.delete(*keys)
with psycopg.connect(os.environ["TEST_DATABASE_URL"], autocommit=True) as server:
    server.execute("DROP DATABASE IF EXISTS test_batches_ci WITH (FORCE)")
PY
}
trap clean_up EXIT

run_pytest .venv/bin/python -m pytest -q -m "not fault and not realmodel and not packaging" tests/
