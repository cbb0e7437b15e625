#!/usr/bin/env bash
# The stand-in postgres image's entrypoint: what compose.yaml relies on from the official image.
#   POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres, the superuser),
#   POSTGRES_DB (default POSTGRES_USER), PGDATA (default /var/lib/postgresql/data);
#   on an empty PGDATA: initdb, then /docker-entrypoint-initdb.d/*.sh (run if executable, else
#   sourced) and *.sql (psql) against a server that listens on its Unix socket only, so that a
#   health check over TCP (`pg_isready -h 127.0.0.1`) never reports the initialising server ready.
set -Eeuo pipefail

export POSTGRES_USER=${POSTGRES_USER:-postgres}
export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export PGDATA=${PGDATA:-/var/lib/postgresql/data}

# `docker run image -c x=y` means `postgres -c x=y`, as with the official image.
if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

psql_init() {
  psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER" "$@"
}

run_init_files() {
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
      *.sql)
        echo "$0: running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f" ;;
      *)
        [ -e "$f" ] && echo "$0: ignoring $f" ;;
    esac
  done
}

initialise() {
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "$0: POSTGRES_PASSWORD is not set: the database is uninitialised and will not start" >&2
    exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  # Like the official image: any address may connect, with a password.
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql_init --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  PGPASSWORD=$POSTGRES_PASSWORD run_init_files
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "$0: initialised; starting"
}

if [ "$1" = postgres ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialise
  fi
fi
exec "$@"
