#!/bin/sh
# Follows the official mariadb image's documented contract (environment variables, init scripts, a first
# start on the socket only); written for this stand-in.
set -eu
case "${1:-}" in -*) set -- mariadbd "$@" ;; esac
if [ "${1:-}" != mariadbd ] && [ "${1:-}" != mysqld ]; then exec "$@"; fi
if [ "$(id -u)" = 0 ]; then
  chown -R mysql:mysql /var/lib/mysql /run/mysqld
  exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

env_of() { eval "printf '%s' \"\${MARIADB_$1:-\${MYSQL_$1:-}}\""; }
lit() { printf '%s' "$1" | sed "s/[\\']/\\\\&/g"; }
ident() { printf '%s' "$1" | sed 's/`/``/g'; }

if [ ! -d /var/lib/mysql/mysql ]; then
  root_pw=$(env_of ROOT_PASSWORD); empty=$(env_of ALLOW_EMPTY_ROOT_PASSWORD); random=$(env_of RANDOM_ROOT_PASSWORD)
  if [ -z "$root_pw" ] && [ -z "$empty" ] && [ -z "$random" ]; then
    echo "error: database is uninitialized and password option is not specified" >&2
    echo "  You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD" >&2
    exit 1
  fi
  if [ -n "$random" ]; then
    root_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+='); echo "GENERATED ROOT PASSWORD: $root_pw"
  fi
  shift
  echo "Initializing database files"
  mariadb-install-db --skip-test-db --auth-root-authentication-method=normal --datadir=/var/lib/mysql "$@" > /dev/null
  echo "Database files initialized"
  mariadbd --skip-networking --socket=/run/mysqld/init.sock "$@" &
  pid=$!
  i=0
  until mariadb --socket=/run/mysqld/init.sock -uroot -e 'SELECT 1' > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "error: the temporary server did not start" >&2; exit 1; }
    sleep 0.1
  done
  host=$(env_of ROOT_HOST); host=${host:-%}
  db=$(env_of DATABASE); user=$(env_of USER); pw=$(env_of PASSWORD)
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    echo "DELETE FROM mysql.global_priv WHERE User = '';"   # no anonymous users
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(lit "$root_pw")';"
    if [ "$host" != localhost ]; then
      echo "CREATE USER 'root'@'$(lit "$host")' IDENTIFIED BY '$(lit "$root_pw")';"
      echo "GRANT ALL ON *.* TO 'root'@'$(lit "$host")' WITH GRANT OPTION;"
    fi
    if [ -n "$db" ]; then echo "CREATE DATABASE IF NOT EXISTS \`$(ident "$db")\`;"; fi
    if [ -n "$user" ] && [ -n "$pw" ]; then
      echo "CREATE USER '$(lit "$user")'@'%' IDENTIFIED BY '$(lit "$pw")';"
      if [ -n "$db" ]; then echo "GRANT ALL ON \`$(ident "$db")\`.* TO '$(lit "$user")'@'%';"; fi
    fi
  } | mariadb --socket=/run/mysqld/init.sock -uroot
  for f in /docker-entrypoint-initdb.d/*; do
    [ -e "$f" ] || continue
    case "$f" in
      *.sh) echo "running $f"; . "$f" ;;
      *.sql) echo "running $f"; mariadb --socket=/run/mysqld/init.sock -uroot -p"$root_pw" "${db:-mysql}" < "$f" ;;
      *) echo "ignoring $f" ;;
    esac
  done
  kill "$pid"; wait "$pid" || true
  echo "MariaDB init process done. Ready for start up."
  set -- mariadbd "$@"
fi
exec "$@"
