#!/usr/bin/env bash
# The whole path on this machine: stack, data, model, worker, API, replay, scores.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
SESSIONS=${DEMO_SESSIONS:-10000}
DATA=data/demo
MODELS=models
API_PORT=${SCORER_API_PORT:-8000}
LOGS=.stack/logs
# A fresh topic prefix and consumer group per run, so this run's scores stand alone.
RUN_ID=demo-$(date +%Y%m%d%H%M%S)
export SCORER_TOPIC_PREFIX="$RUN_ID."
export SCORER_APP_ID="$RUN_ID"
export SCORER_REDIS_KEY_PREFIX="$RUN_ID"
export SCORER_MODEL_PATH="$MODELS/Pickled_model.pkl"
# The API wants keys: fresh ones for this run, unless given (a scoring key for /predict
# and /sessions, a dashboard key for the page's login).
export SCORER_API_KEY="${SCORER_API_KEY:-demo-scoring-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export SCORER_DASHBOARD_KEY="${SCORER_DASHBOARD_KEY:-demo-dashboard-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

say() { printf '\n== %s\n' "$*"; }

started_stack=0
bash scripts/stack.sh status >/dev/null 2>&1 || started_stack=1
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$started_stack" = 1 ]; then bash scripts/stack.sh down || true; fi
}
trap cleanup EXIT

say "Local stack (Kafka 3.9.1 KRaft + Redis on 127.0.0.1)"
bash scripts/stack.sh up
mkdir -p "$LOGS"

say "Generating $SESSIONS sessions into $DATA"
$PY -m training generate --sessions "$SESSIONS" --seed 1 --out "$DATA" --no-progress

say "Training the model into $MODELS"
$PY -m training train --data "$DATA" --out "$MODELS" > "$LOGS/demo-train.json"
$PY - <<'PYEOF'
import json
card = json.load(open("models/model_card.json"))
m = card["metrics"]
print(f"model {card['version']}: session-start ROC-AUC {m['session_start']['test_roc_auc']:.3f}, "
      f"in-session ROC-AUC {m['in_session']['test_roc_auc']:.3f} (held-out last weeks)")
PYEOF

say "Starting the worker (log: $LOGS/demo-worker.log) and the API on 127.0.0.1:$API_PORT (log: $LOGS/demo-api.log)"
$PY -m stream worker > "$LOGS/demo-worker.log" 2>&1 &
pids+=($!)
$PY -m api --host 127.0.0.1 --port "$API_PORT" > "$LOGS/demo-api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null || { echo "demo: the API did not start; see $LOGS/demo-api.log" >&2; exit 1; }

say "Replaying $DATA into Kafka"
$PY -m stream replay --data "$DATA"

say "Score events on ${SCORER_TOPIC_PREFIX}conversion.scores"
$PY -m stream tail --topic conversion.scores --expect-from-data "$DATA" --show 8 --timeout 180

say "The API: the latest score of one session"
sid=$($PY -c "import csv; r = csv.DictReader(open('$DATA/ga_sessions.csv')); print(next(r)['session_id'])")
echo "GET /sessions/$sid/score"
curl -s -H "X-API-Key: $SCORER_API_KEY" "http://127.0.0.1:$API_PORT/sessions/$sid/score"; echo
echo "POST /predict (the same session row)"
row=$($PY -c "import csv, json; r = next(csv.DictReader(open('$DATA/ga_sessions.csv'))); print(json.dumps({k: (v if v != '' else None) for k, v in r.items()} | {'visit_number': int(r['visit_number'])}))")
curl -s -X POST "http://127.0.0.1:$API_PORT/predict" -H "X-API-Key: $SCORER_API_KEY" -H 'content-type: application/json' -d "$row"; echo

say "The dashboard: http://127.0.0.1:$API_PORT/dashboard (its data: /dashboard/data?window=all)"
API_PORT=$API_PORT $PY - <<'PYEOF'
import json
import os
import urllib.request

url = f"http://127.0.0.1:{os.environ['API_PORT']}/dashboard/data?window=all&hot=5"
request = urllib.request.Request(url, headers={"X-API-Key": os.environ["SCORER_DASHBOARD_KEY"]})
with urllib.request.urlopen(request, timeout=10) as response:
    d = json.load(response)
t, now = d["totals"], d["now"]
models = ", ".join(now["model_versions"]) or "-"
print(f"sessions {t['sessions']:,}, expected conversions {t['expected']:.1f}, "
      f"observed {t['observed']}, open now {now['active_sessions']}, model {models}")
print(f"  {'utm_medium':18} {'sessions':>9} {'expected':>9} {'observed':>9}")
for r in d["channels"]["utm_medium"][:6]:
    print(f"  {r['value'][:18]:18} {r['sessions']:9,} {r['expected']:9.1f} {r['observed']:9}")
print("hottest open sessions:")
for s in d["hot"]:
    print(f"  {s['session_id']:45} p={s['probability']:.3f} hits={s['hits']:<3} "
          f"{s['utm_medium']} / {s['device_category']} / {s['geo_city']}")
PYEOF

if [ "${DEMO_STAY:-0}" = 1 ]; then
  say "DEMO_STAY=1: the worker and the API keep running; open the dashboard, Ctrl-C to stop"
  echo "http://127.0.0.1:$API_PORT/dashboard: log in with the dashboard key $SCORER_DASHBOARD_KEY"
  echo "scoring: curl -H 'X-API-Key: $SCORER_API_KEY' http://127.0.0.1:$API_PORT/sessions/$sid/score"
  wait
fi

say "Done; stopping what the demo started"
