#!/bin/sh
# A throwaway PostgreSQL cluster for the tests, from Debian's `postgresql` package (no Docker, no service).
#
#   scripts/postgres.sh install         install Debian's postgresql when it is missing (root: apt-get)
#   scripts/postgres.sh start DIR PORT  initdb a cluster in DIR (trust auth, no fsync) and start it on
#                                       127.0.0.1:PORT; prints its URL
#   scripts/postgres.sh url DIR         the URL of the cluster in DIR
#   scripts/postgres.sh stop DIR        stop it and remove DIR
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user (DIR is
# given to it); as anyone else, to that user. tests/conftest.py calls this once per test session
# unless EVENTLAB_TEST_POSTGRES_URL names a server to use instead.
set -eu

bindir() {
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
    echo "postgres.sh: no PostgreSQL server found (initdb); run: scripts/postgres.sh install" >&2
    exit 1
}

as_owner() {  # run "$@" as the cluster's owner
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
install)
    if dpkg -s postgresql >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        exit 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL tests: please install PostgreSQL (apt-get install -y postgresql)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    ;;
start)
    dir=$2 port=$3
    bin=$(bindir)
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_owner "$bin/initdb" --auth=trust --username=postgres --encoding=UTF8 --no-instructions --no-sync \
        -D "$dir/data" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # A test cluster: durability off (fsync, synchronous_commit) for speed; sockets in DIR only.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
url)
    echo "postgresql://postgres@127.0.0.1:$(cat "$2/port")/postgres"
    ;;
stop)
    dir=$2
    if [ -d "$dir/data" ]; then
        as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
