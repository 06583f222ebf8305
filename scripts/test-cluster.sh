#!/usr/bin/env bash
# Run the tests of state against the cluster stack (three Kafka nodes, a Redis Cluster of
# three masters with a replica each): end to end, the worker killed at random moments,
# parity with the API, and the failover tests (a Redis master, a Kafka broker killed
# mid-replay). Stops the cluster stack afterwards only if this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."

export SCORER_STACK=cluster
started=0
if ! bash scripts/stack.sh status >/dev/null 2>&1; then
  started=1
fi
bash scripts/stack.sh up
cleanup() {
  if [ "$started" = 1 ]; then bash scripts/stack.sh down || true; fi
}
trap cleanup EXIT
eval "$(bash scripts/stack.sh env)"

rm -f test-artifacts/cluster-failover.json
.venv/bin/python -m pytest -m "integration" \
  tests/integration/test_stream_end_to_end.py \
  tests/integration/test_api_parity.py \
  "tests/integration/test_worker_guarantees.py::test_kill_9_at_random_moments_loses_nothing_and_counts_nothing_twice" \
  tests/integration/test_cluster.py "$@"
echo "test-cluster: how long no score came out around each kill (s):"
cat test-artifacts/cluster-failover.json
