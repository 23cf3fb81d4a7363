#!/usr/bin/env bash
# A throwaway S3 server (moto) for the tests.
#
#   infra/s3.sh start DIR PORT   start moto_server on 127.0.0.1:PORT, wait
#                                until it answers, write its pid to DIR/pid
#   infra/s3.sh stop DIR         stop it
#
# moto keeps everything in memory and accepts any key pair.
set -euo pipefail

venv=${CARAPACE_VENV:-${HOME:-/root}/.cache/carapace/venv}
case "${1:-}" in
  start)
    dir=$2 port=$3
    mkdir -p "$dir"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do
      if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; then
        exit 0
      fi
      sleep 0.1
    done
    echo "moto_server did not start:" >&2
    cat "$dir/moto.log" >&2
    exit 1
    ;;
  stop)
    dir=$2
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; fi
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
