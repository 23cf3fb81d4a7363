#!/usr/bin/env bash
# A throwaway Azure Blob Storage server (Azurite, Microsoft's emulator) for
# the tests.
#
#   infra/azurite.sh start DIR PORT   start azurite-blob on 127.0.0.1:PORT
#                                     (in memory), wait until it answers,
#                                     write its pid to DIR/pid
#   infra/azurite.sh stop DIR         stop it
#
# Azurite is installed by infra/install-deps into
# $CARAPACE_AZURITE_DIR (default ~/.cache/carapace/azurite). Its account is
# the emulator's well-known `devstoreaccount1`.
set -euo pipefail

prefix=${CARAPACE_AZURITE_DIR:-${HOME:-/root}/.cache/carapace/azurite}
case "${1:-}" in
  start)
    dir=$2 port=$3
    mkdir -p "$dir"
    "$prefix/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
      --inMemoryPersistence --disableTelemetry --silent >"$dir/azurite.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do
      # Any HTTP answer (403 without credentials) means it is up.
      if python3 -c "
import urllib.request, urllib.error
try:
    urllib.request.urlopen('http://127.0.0.1:$port/devstoreaccount1?comp=list')
except urllib.error.HTTPError:
    pass
" 2>/dev/null; then
        exit 0
      fi
      sleep 0.1
    done
    echo "azurite did not start:" >&2
    cat "$dir/azurite.log" >&2
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
