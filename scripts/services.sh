#!/usr/bin/env bash
# Start the local Redis and NATS (JetStream) servers the tests talk to, when they are not running.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 6379; then
  if command -v redis-server >/dev/null; then
    mkdir -p /tmp/soma-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/soma-redis --logfile /tmp/soma-redis/redis.log
  else
    echo "services: redis-server not installed; Redis tests will report it" >&2
  fi
fi
if ! up 4222; then
  if command -v nats-server >/dev/null; then
    mkdir -p /tmp/soma-nats
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/soma-nats >/tmp/soma-nats/nats.log 2>&1 &
  else
    echo "services: nats-server not installed; NATS tests will report it" >&2
  fi
fi
for _ in $(seq 1 50); do up 6379 && up 4222 && exit 0; sleep 0.1; done
exit 0
