#!/bin/sh
# The "accesslog" side of this benchmark: the same weir binary, with `serve` given an access log
# (a file on the root disk) and the admin listener (so workers also publish live downloads).
# Before each server start, the previous run's line count is appended to lines.txt and the file
# emptied, so the lines written can be compared with the requests the clients made.
WEIR="${WEIR_REAL:-target/release/weir}"
DIR="${ACCESSLOG_DIR:-/tmp/weir-accesslog-bench}"
if [ "$1" = serve ]; then
  shift
  mkdir -p "$DIR"
  if [ -f "$DIR/access.log" ]; then
    echo "$(date -u +%FT%TZ) $(wc -l < "$DIR/access.log")" >> "$DIR/lines.txt"
    : > "$DIR/access.log"
  fi
  exec "$WEIR" serve "$@" --access-log "$DIR/access.log" --admin-listen 127.0.0.1:0
fi
exec "$WEIR" "$@"
