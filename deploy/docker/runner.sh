#!/bin/sh
# The llmdrill runner's entry point: waits (bounded) until the engine answers its health
# URL, then runs `llmdrill "$@"`. A GPU engine can take minutes to load its model.
set -eu
url="${LLMDRILL_WAIT_URL:-}"
limit="${LLMDRILL_WAIT_TIMEOUT:-900}"
if [ -n "$url" ]; then
  echo "waiting up to ${limit}s for $url" >&2
  python3 - "$url" "$limit" <<'PY'
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
deadline = time.time() + limit
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status == 200:
                break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit(f"{url} did not answer 200 within {limit:.0f}s")
    time.sleep(2)
PY
fi
exec llmdrill "$@"
