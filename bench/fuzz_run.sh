#!/bin/sh
# The dedicated hostile-input run: 10,000 hypothesis examples per property and adapter
# (pure ASGI, WSGI, Flask, Django under WSGI and ASGI; plain, signed and on_invalid=reject),
# and 10,000 tampered signed tokens through each adapter. `make test` runs the same tests
# with 150 examples each.
#
#   bench/fuzz_run.sh                 # every adapter
#   bench/fuzz_run.sh -k django-asgi  # one adapter (any pytest arguments)
#
# Prints one line per property (examples run; how many resumed a session, carried an
# invalid value or none), one per adapter for the tampered tokens, and the time taken.
set -u
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
HYPOTHESIS_PROFILE=dedicated .venv/bin/pytest tests/test_fuzz.py tests/test_signing.py \
    -q -s "$@" >"$log" 2>&1
status=$?
grep -oE "(fuzz|signing): .*|[0-9]+ (passed|failed).*" "$log"
[ "$status" -eq 0 ] || tail -n 60 "$log"
echo "elapsed: $(( $(date +%s) - start )) s"
exit "$status"
