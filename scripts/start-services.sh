#!/usr/bin/env bash
# Start the local services the tests talk to, when they are not already up.
# This machine kind starts them before a session; CI and fresh machines may not.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do up "$port" && return 0; sleep 1; done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

if ! up 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for 5432 PostgreSQL || exit 1
fi
if ! up 6379; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  wait_for 6379 Redis || exit 1
fi
if ! up 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for 5672 RabbitMQ || exit 1
  # the AMQP port opens before the broker accepts work
  for _ in $(seq 1 30); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
fi
echo "services up: PostgreSQL 5432, Redis 6379, RabbitMQ 5672"
