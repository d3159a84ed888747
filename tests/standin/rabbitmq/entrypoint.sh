#!/bin/sh
# Follows the official rabbitmq image's documented contract; written for this stand-in. rabbitmq-server runs
# as the rabbitmq user (setpriv execs, so `docker stop`'s SIGTERM reaches the server's own handler).
set -eu
if [ "${1:-}" = "rabbitmq-server" ] && [ "$(id -u)" = 0 ]; then
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"
fi
exec "$@"
