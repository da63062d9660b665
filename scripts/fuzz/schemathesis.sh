#!/usr/bin/env bash
# API fuzzing, bounded (not in CI): schemathesis against a real `modelport serve` on a free local
# port with a temporary data dir. Two runs: the prediction endpoints of a deployed model (an
# OpenAPI made here from its build's input and output schema: POST /models/fuzz/predict and POST
# /model) and the management API (/schema/openapi.json, admin token). Every
# check is on (no 5xx, responses match their schema, bad input refused, good input accepted, ...).
# The server is stopped by its pid; its log is scanned for tracebacks.
#
#   scripts/fuzz/schemathesis.sh                  # 100 cases per operation, at most 300 s a run
#   MAX_EXAMPLES=20 MAX_TIME=60 SEED=1 scripts/fuzz/schemathesis.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
MAX_TIME=${MAX_TIME:-300}
SEED=${SEED:-$RANDOM}
WORKERS=${WORKERS:-4}

if ! "$PY" -c 'import schemathesis' 2>/dev/null; then
  echo "installing schemathesis into $(dirname "$BIN") (script-only; not a project dependency)"
  "$PY" -m pip install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/modelport-fuzz.XXXXXX")
DATA=$WORK/data
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
echo "server: $URL, data dir $DATA, reports in $WORK"

# The server's environment: ours without MODELPORT_* settings, then its own data dir.
env -u MODELPORT_URL -u MODELPORT_TOKEN -u MODELPORT_CORS_ORIGINS MODELPORT_HOME="$DATA" \
  PYTHONUNBUFFERED=1 "$PY" -m modelport.cli serve --port "$PORT" --data-dir "$DATA" \
  >"$WORK/server.log" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"
    wait "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT

for _ in $(seq 300); do
  if "$PY" -c "import httpx, sys; sys.exit(httpx.get('$URL/api/v1/health').status_code != 200)" \
      2>/dev/null; then break; fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
TOKEN=$(cat "$DATA/admin.token")

# Something to find: a deployed model named `fuzz` (typed parameters, so its schema is rich).
mkdir -p "$WORK/project"
cat >"$WORK/project/predict.py" <<'PY'
def predict(a: float, b: int = 1, label: str = "", tags: list[str] = [], extra: dict = {}) -> dict:
    return {"sum": a + b, "label": label, "tags": len(tags), "extra": len(extra)}
PY
MODELPORT_URL=$URL MODELPORT_TOKEN=$TOKEN "$PY" -m modelport.cli deploy "$WORK/project" \
  --name fuzz --entry predict.py:predict --example-input '{"a": 1.5}' >"$WORK/deploy.log" 2>&1 \
  || { cat "$WORK/deploy.log"; exit 1; }

KEY=$("$PY" -c "import httpx; print(httpx.post('$URL/api/v1/models/fuzz/access-key/rotate',
  headers={'Authorization': 'Bearer $TOKEN'}).json()['access_key'])")

# The prediction endpoints' OpenAPI, from the build's input and output schema.
"$PY" - "$URL" "$TOKEN" >"$WORK/predictions.json" <<'PY'
import json, sys
import httpx
url, token = sys.argv[1:]
build = httpx.get(f"{url}/api/v1/models/fuzz/builds/1", headers={"Authorization": f"Bearer {token}"}).json()
error = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}}
errors = {str(c): {"description": "error", "content": {"application/json": {"schema": error}}}
          for c in (400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504)}
def post(body, out, params=()):
    return {"post": {"parameters": list(params),
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": {"200": {"description": "the function's answer",
                                           "content": {"application/json": {"schema": out}}}, **errors}}}
cloudera_in = {"type": "object", "required": ["request"], "properties": {"request": build["input_schema"]}}
cloudera_out = {"type": "object", "required": ["success", "response", "ReplicaID"], "properties": {
    "success": {"const": True}, "response": build["output_schema"], "ReplicaID": {"type": "string"}}}
key = {"name": "accessKey", "in": "query", "required": True, "schema": {"type": "string"}}
print(json.dumps({"openapi": "3.1.0", "info": {"title": "fuzz predictions", "version": "1"},
                  "paths": {"/models/fuzz/predict": post(build["input_schema"], build["output_schema"]),
                            "/model": post(cloudera_in, cloudera_out, [key])}}))
PY

# Opaque or free-form parameters the server checks (`cursor`: one it gave out; `since`/`until`:
# ISO-8601 or seconds) are pinned to valid values: a made-up one is a 422 by design.
cat >"$WORK/schemathesis.toml" <<TOML
[parameters]
"query.cursor" = ""
"query.since" = "3600"
"query.until" = "0"
"query.accessKey" = "$KEY"
TOML

run() {  # name, schema location, extra args...
  local name=$1 location=$2
  shift 2
  echo
  echo "== $name: $location"
  local started=$SECONDS status=0
  (cd "$WORK" && "$BIN/schemathesis" --config-file "$WORK/schemathesis.toml" run "$location" \
    --url "$URL" --header "Authorization: Bearer $TOKEN" --checks all \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --seed "$SEED" --workers "$WORKERS" \
    --generation-database none --request-timeout 60 --no-color \
    --report junit,ndjson --report-dir "$WORK/$name" "$@") 2>&1 | tee "$WORK/$name.txt" \
    || status=$?
  echo "== $name: exit $status in $((SECONDS - started)) s (seed $SEED)"
  return "$status"
}

# Predictions first: the management run may stop and delete the model. It leaves out
# DELETE /api/v1/tokens/{token_id}: its stateful phase finds the admin token's id in GET
# /api/v1/tokens and revokes it, and every later request is a 401 (revocation is tested in
# tests/integration/test_auth_api.py).
total=0
run predictions "$WORK/predictions.json" || total=1
run management "$URL/schema/openapi.json" --exclude-path-regex '^/api/v1/tokens/\{token_id\}$' \
  || total=1

stop_server
tracebacks=$(grep -c "Traceback" "$WORK/server.log" || true)
echo
echo "server log: $WORK/server.log ($tracebacks tracebacks)"
[ "$tracebacks" -eq 0 ] || { grep -n -A30 "Traceback" "$WORK/server.log" | head -200; total=1; }
exit "$total"
