#!/bin/sh
# Regenerates src/api/schema.d.ts from the API's OpenAPI document (the Python app in ../src).
# With --check: fails when the committed file differs from a fresh generation (CI runs this).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-../.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Run outside the checkout (no .env read) and without TELEMETRA_* settings from the environment.
(cd "$TMP" && env $(env | sed -n 's/^\(TELEMETRA_[A-Za-z0-9_]*\)=.*/-u \1/p') "$PY" -c "
import json
from telemetra.api.app import create_app
from telemetra.config import Settings
app = create_app(Settings(secret_key='openapi-dump-only-3f9a1c7e5b2d8046-never-used', database_url='sqlite:///:memory:'))
print(json.dumps(app.openapi(), indent=1, sort_keys=True))
") > "$TMP/openapi.json"
npx --no-install openapi-typescript "$TMP/openapi.json" -o "$TMP/schema.d.ts" >/dev/null
npx --no-install prettier --log-level warn --stdin-filepath src/api/schema.d.ts < "$TMP/schema.d.ts" > "$TMP/schema.fmt.d.ts"
if [ "${1:-}" = "--check" ]; then
  if ! cmp -s "$TMP/schema.fmt.d.ts" src/api/schema.d.ts; then
    diff -u src/api/schema.d.ts "$TMP/schema.fmt.d.ts" | head -40 >&2 || true
    echo "web/src/api/schema.d.ts is out of date with the API: run 'cd web && npm run api:generate' and commit it" >&2
    exit 1
  fi
  echo "web/src/api/schema.d.ts matches the API"
else
  cp "$TMP/schema.fmt.d.ts" src/api/schema.d.ts
  echo "wrote web/src/api/schema.d.ts"
fi
