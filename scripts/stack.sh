#!/usr/bin/env bash
# The local stack on 127.0.0.1, installed on first use. SCORER_STACK picks the variant:
#   single (the default)  one Apache Kafka broker (KRaft, broker and controller in one
#                         process) and one redis-server; state under .stack/
#   cluster               three Kafka nodes (each broker and controller, one quorum of
#                         three, replication factor 3, min ISR 2) and a Redis Cluster of
#                         three masters with a replica each; state under .stack/cluster/
# Usage: stack.sh up|down|status|reset|env
#   env prints the variant's client settings as export lines:
#   eval "$(SCORER_STACK=cluster bash scripts/stack.sh env)"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-3.9.1}
VARIANT=${SCORER_STACK:-single}
KAFKA_PORT=${SCORER_KAFKA_PORT:-9092}
CONTROLLER_PORT=${SCORER_KAFKA_CONTROLLER_PORT:-9093}
REDIS_PORT=${SCORER_REDIS_PORT:-6379}
PARTITIONS=${SCORER_KAFKA_PARTITIONS:-6}
KAFKA_HEAP=${SCORER_KAFKA_HEAP:-384m}
STACK_DIR=${SCORER_STACK_DIR:-$ROOT/.stack}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/sberauto-scorer/kafka-$KAFKA_VERSION
LIBS=$CACHE_DIR/libs
LOGS=$STACK_DIR/logs
RUN=$STACK_DIR/run
PY=$ROOT/.venv/bin/python

# The cluster variant. Kafka node N (1..3) takes the client port CLUSTER_KAFKA_PORT+N-1
# and the quorum port CLUSTER_CONTROLLER_PORT+N-1; the six Redis nodes take
# CLUSTER_REDIS_PORT and the five ports after it. Its logs and pidfiles live under
# CLUSTER_DIR, apart from the single stack's, so both can run side by side.
CLUSTER_DIR=$STACK_DIR/cluster
CLUSTER_KAFKA_PORT=${SCORER_CLUSTER_KAFKA_PORT:-29092}
CLUSTER_CONTROLLER_PORT=${SCORER_CLUSTER_CONTROLLER_PORT:-29192}
CLUSTER_KAFKA_HEAP=${SCORER_CLUSTER_KAFKA_HEAP:-256m}
CLUSTER_REDIS_PORT=${SCORER_CLUSTER_REDIS_PORT:-7000}
# How long a Redis node may be unreachable before the others count it as failed; a
# replica takes over from a failed master about a second after that.
CLUSTER_REDIS_NODE_TIMEOUT=${SCORER_CLUSTER_REDIS_NODE_TIMEOUT:-1500}
KAFKA_NODES=(1 2 3)
mapfile -t REDIS_NODES < <(seq "$CLUSTER_REDIS_PORT" $((CLUSTER_REDIS_PORT + 5)))

say() { echo "stack: $*"; }
die() { echo "stack: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A pidfile counts only while its process is alive and is still the one we started:
# its command line must match the pattern (a basic regular expression).
alive() {
  local name=$1 pattern=$2 pid
  [ -f "$RUN/$name.pid" ] || return 1
  pid=$(cat "$RUN/$name.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

# Whether a pid still runs. An exited process stays a zombie until its parent reaps it,
# and kill -0 still succeeds on a zombie: its state letter (after the "(comm)" field of
# /proc/PID/stat) tells.
running() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1)" != Z ]
}

# Stops the processes named by NAME PATTERN pairs: SIGTERM to each one of ours that
# runs, all at once, then up to 30 s for them to exit, then SIGKILL for any left. (All
# at once matters for the Kafka cluster; see cluster_down.)
stop_processes() {
  local names=() pids=() name pattern pid i left
  while [ $# -ge 2 ]; do
    name=$1 pattern=$2
    shift 2
    if alive "$name" "$pattern"; then
      pid=$(cat "$RUN/$name.pid")
      kill -TERM "$pid"
      names+=("$name")
      pids+=("$pid")
    else
      rm -f "$RUN/$name.pid"
      say "$name is not running"
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 1 60); do
    left=0
    for pid in "${pids[@]}"; do
      if running "$pid"; then left=1; fi
    done
    [ "$left" = 1 ] || break
    sleep 0.5
  done
  for i in "${!pids[@]}"; do
    if running "${pids[$i]}"; then
      say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 30 s; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    rm -f "$RUN/${names[$i]}.pid"
    say "${names[$i]} stopped"
  done
}

stop_process() { stop_processes "$1" "$2"; }

# ---- Kafka ----------------------------------------------------------------------------

fetch_kafka() {
  if [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$LIBS/.complete" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka's jars: apt-get install maven"
  command -v java >/dev/null || die "Java 11+ is needed to run Kafka: apt-get install openjdk-17-jre-headless"
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  mkdir -p "$LIBS"
  mvn -q -B -Dstyle.color=never -f "$ROOT/scripts/stack/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$LIBS" \
    || die "Maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  touch "$LIBS/.complete"
}

# kafka_java HEAP LOG_FILE MAIN_CLASS ARGS...: replaces the calling (sub)shell with a
# JVM running one of Kafka's main classes; its log4j output goes to LOG_FILE.
kafka_java() {
  local heap=$1 log_file=$2
  shift 2
  exec java -Xmx"$heap" -Xms128m -XX:+UseSerialGC \
    -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$ROOT/scripts/stack/log4j.properties" \
    -Dkafka.logs.file="$log_file" \
    -cp "$LIBS/*" "$@"
}

# new_cluster_id HEAP LOG_FILE: prints a fresh KRaft cluster id.
new_cluster_id() {
  (kafka_java "$1" "$2" kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -n 1
}

write_kafka_config() {
  mkdir -p "$STACK_DIR/kafka"
  cat > "$STACK_DIR/kafka/server.properties" <<EOF
# Written by scripts/stack.sh: a single-node KRaft broker for local work and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STACK_DIR/kafka/data
num.partitions=$PARTITIONS
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=48
log.segment.bytes=134217728
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.threads=1
EOF
}

start_kafka() {
  if alive kafka kafka.Kafka; then
    say "kafka is already running (pid $(cat "$RUN/kafka.pid"), 127.0.0.1:$KAFKA_PORT)"
    return 0
  fi
  for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    port_open "$port" && die "port $port is taken by a process this stack did not start; \
stop it or choose another port with SCORER_KAFKA_PORT / SCORER_KAFKA_CONTROLLER_PORT"
  done
  fetch_kafka
  write_kafka_config
  if [ ! -f "$STACK_DIR/kafka/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(new_cluster_id "$KAFKA_HEAP" "$LOGS/kafka.log")
    (kafka_java "$KAFKA_HEAP" "$LOGS/kafka.log" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$STACK_DIR/kafka/server.properties") > "$LOGS/kafka-format.log" 2>&1 \
      || die "formatting the Kafka log directory failed; see $LOGS/kafka-format.log"
  fi
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (heap $KAFKA_HEAP)"
  (kafka_java "$KAFKA_HEAP" "$LOGS/kafka.log" kafka.Kafka "$STACK_DIR/kafka/server.properties") \
    > "$LOGS/kafka.out" 2>&1 < /dev/null &
  echo $! > "$RUN/kafka.pid"
}

wait_kafka() {
  [ -x "$PY" ] || die "the project's venv is missing: run make install"
  if ! "$PY" "$ROOT/scripts/stack/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" 90; then
    alive kafka kafka.Kafka || die "kafka exited; see $LOGS/kafka.log and $LOGS/kafka.out"
    die "kafka did not answer a metadata request within 90 s; see $LOGS/kafka.log"
  fi
  say "kafka is ready on 127.0.0.1:$KAFKA_PORT"
}

# ---- Redis ----------------------------------------------------------------------------

ensure_redis() {
  command -v redis-server >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq > "$LOGS/apt.log" 2>&1 || die "apt-get update failed; see $LOGS/apt.log"
    apt-get install -y -qq redis-server >> "$LOGS/apt.log" 2>&1 \
      || die "apt-get install redis-server failed; see $LOGS/apt.log"
  else
    die "redis-server is not installed: run 'sudo apt-get install redis-server' (Debian) and retry"
  fi
}

# wait_redis NAME PATTERN PORT LOG_FILE SECONDS: until the server answers PING. A server
# still loading its append-only file answers LOADING instead, so the wait goes on.
wait_redis() {
  local name=$1 pattern=$2 port=$3 log_file=$4 seconds=$5
  for _ in $(seq 1 $((seconds * 5))); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    alive "$name" "$pattern" || die "$name exited; see $log_file"
    sleep 0.2
  done
  die "$name did not answer PING within $seconds s; see $log_file"
}

start_redis() {
  if alive redis redis-server; then
    say "redis is already running (pid $(cat "$RUN/redis.pid"), 127.0.0.1:$REDIS_PORT)"
    return 0
  fi
  ensure_redis
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by a process this stack did not \
start (a system redis?); stop it or choose another port with SCORER_REDIS_PORT"
  mkdir -p "$STACK_DIR/redis"
  say "starting redis on 127.0.0.1:$REDIS_PORT"
  # Hash values up to 1 KB keep a session's state hash (its feature vector and outcome
  # among small counters) in the compact listpack encoding, as docker-compose.yml does;
  # one of more than 64 fields (a session past about 60 hits) becomes a hash table,
  # where a write finds its field without reading the whole hash.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STACK_DIR/redis" \
    --logfile "$LOGS/redis.log" --save "" --appendonly no --daemonize no \
    --maxmemory-policy noeviction --hash-max-listpack-value 1024 \
    --hash-max-listpack-entries 64 > /dev/null 2>&1 < /dev/null &
  echo $! > "$RUN/redis.pid"
  wait_redis redis redis-server "$REDIS_PORT" "$LOGS/redis.log" 10
  say "redis is ready on 127.0.0.1:$REDIS_PORT"
}

# ---- the cluster variant: Kafka ---------------------------------------------------------

cluster_kafka_port() { echo $((CLUSTER_KAFKA_PORT + $1 - 1)); }
cluster_controller_port() { echo $((CLUSTER_CONTROLLER_PORT + $1 - 1)); }

# The command line of node N names its own properties file, which tells the nodes apart.
cluster_kafka_pattern() { echo "kafka.Kafka $CLUSTER_DIR/kafka-$1/server.properties"; }

cluster_bootstrap() {
  local n out=()
  for n in "${KAFKA_NODES[@]}"; do out+=("127.0.0.1:$(cluster_kafka_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

write_cluster_kafka_config() {
  local n=$1 dir=$CLUSTER_DIR/kafka-$1 voters=() m
  for m in "${KAFKA_NODES[@]}"; do voters+=("$m@127.0.0.1:$(cluster_controller_port "$m")"); done
  mkdir -p "$dir"
  cat > "$dir/server.properties" <<EOF
# Written by scripts/stack.sh: node $n of a three-node KRaft cluster for local work and
# tests. Every node is a broker and a voter of the one controller quorum.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://127.0.0.1:$(cluster_kafka_port "$n"),CONTROLLER://127.0.0.1:$(cluster_controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(cluster_kafka_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=$PARTITIONS
auto.create.topics.enable=true
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
group.initial.rebalance.delay.ms=0
log.retention.hours=48
log.segment.bytes=134217728
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
log.cleaner.threads=1
# The cleaner's dedupe buffer is taken from the heap when the node starts (128 MB by
# default); a quarter of that is plenty here and leaves room in a small heap.
log.cleaner.dedupe.buffer.size=33554432
EOF
}

# All nodes must be formatted with one cluster id. A node that still has data knows it;
# otherwise the id drawn when the cluster was first formatted is kept in a file.
cluster_kafka_id() {
  local n meta file=$CLUSTER_DIR/kafka-cluster-id
  for n in "${KAFKA_NODES[@]}"; do
    meta=$CLUSTER_DIR/kafka-$n/data/meta.properties
    if [ -f "$meta" ]; then
      sed -n 's/^cluster\.id=//p' "$meta"
      return 0
    fi
  done
  if [ ! -s "$file" ]; then
    new_cluster_id "$CLUSTER_KAFKA_HEAP" "$LOGS/kafka-tools.log" > "$file"
  fi
  cat "$file"
}

# Formats the log directories of the given nodes that have none yet, in parallel.
format_cluster_kafka() {
  local todo=() pids=() n i cluster_id
  for n in "$@"; do
    [ -f "$CLUSTER_DIR/kafka-$n/data/meta.properties" ] || todo+=("$n")
  done
  [ ${#todo[@]} -gt 0 ] || return 0
  cluster_id=$(cluster_kafka_id)
  [ -n "$cluster_id" ] || die "could not draw a Kafka cluster id; see $LOGS/kafka-tools.log"
  say "formatting kafka node(s) ${todo[*]} with cluster id $cluster_id"
  for n in "${todo[@]}"; do
    (kafka_java "$CLUSTER_KAFKA_HEAP" "$LOGS/kafka-$n.log" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$CLUSTER_DIR/kafka-$n/server.properties") \
      > "$LOGS/kafka-$n-format.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!todo[@]}"; do
    wait "${pids[$i]}" || die "formatting kafka-${todo[$i]}'s log directory failed; \
see $LOGS/kafka-${todo[$i]}-format.log"
  done
}

start_cluster_kafka_node() {
  local n=$1
  say "starting kafka-$n on 127.0.0.1:$(cluster_kafka_port "$n") (heap $CLUSTER_KAFKA_HEAP)"
  (kafka_java "$CLUSTER_KAFKA_HEAP" "$LOGS/kafka-$n.log" \
    kafka.Kafka "$CLUSTER_DIR/kafka-$n/server.properties") \
    > "$LOGS/kafka-$n.out" 2>&1 < /dev/null &
  echo $! > "$RUN/kafka-$n.pid"
}

# Ready means each node answers a metadata request itself and lists all three brokers
# (wait_kafka.py with a broker count): the first node answers before the others have
# registered, and a node killed a moment ago is still listed until it is fenced.
wait_cluster_kafka() {
  local n bootstrap
  bootstrap=$(cluster_bootstrap)
  [ -x "$PY" ] || die "the project's venv is missing: run make install"
  if ! "$PY" "$ROOT/scripts/stack/wait_kafka.py" "$bootstrap" 150 "${#KAFKA_NODES[@]}"; then
    for n in "${KAFKA_NODES[@]}"; do
      alive "kafka-$n" "$(cluster_kafka_pattern "$n")" \
        || die "kafka-$n exited; see $LOGS/kafka-$n.log and $LOGS/kafka-$n.out"
    done
    die "the Kafka cluster did not list ${#KAFKA_NODES[@]} brokers within 150 s; see $LOGS/kafka-*.log"
  fi
  say "kafka cluster is ready: ${#KAFKA_NODES[@]} brokers on $bootstrap"
}

# ---- the cluster variant: Redis Cluster --------------------------------------------------

# Redis rewrites its process title to "redis-server 127.0.0.1:PORT [cluster]" once it
# runs; before that the command line still holds "--port PORT". This matches both.
cluster_redis_pattern() { echo "redis-server.*[ :]$1 "; }

start_cluster_redis_node() {
  local port=$1 dir=$CLUSTER_DIR/redis-$1
  mkdir -p "$dir"
  say "starting redis-$port on 127.0.0.1:$port"
  # The append-only file (fsync once a second) brings a restarted node back with its
  # data; nodes.conf in the node's directory brings it back into the cluster.
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --logfile "$LOGS/redis-$port.log" --daemonize no \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout "$CLUSTER_REDIS_NODE_TIMEOUT" \
    --save "" --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --hash-max-listpack-value 1024 \
    --hash-max-listpack-entries 64 > /dev/null 2>&1 < /dev/null &
  echo $! > "$RUN/redis-$port.pid"
}

cluster_info_field() {
  redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

# Creates the Redis Cluster when no node belongs to one yet. A node that knows only
# itself and serves no slot while others form a cluster lost its nodes.conf: that needs
# a reset rather than a guess.
ensure_redis_cluster() {
  local port fresh=() joined=() addrs=()
  for port in "${REDIS_NODES[@]}"; do
    if [ "$(cluster_info_field "$port" cluster_known_nodes)" = 1 ] \
      && [ "$(cluster_info_field "$port" cluster_slots_assigned)" = 0 ]; then
      fresh+=("$port")
    else
      joined+=("$port")
    fi
    addrs+=("127.0.0.1:$port")
  done
  if [ ${#joined[@]} -gt 0 ]; then
    [ ${#fresh[@]} -eq 0 ] || die "redis node(s) ${fresh[*]} are outside the cluster that \
${joined[*]} form (their nodes.conf is gone); SCORER_STACK=cluster bash scripts/stack.sh reset starts afresh"
    return 0
  fi
  say "creating the Redis Cluster: ${#REDIS_NODES[@]} nodes, 3 masters with a replica each"
  # (TERM=dumb: no colour codes in the log. On one host redis-cli warns that replicas
  # share their master's host; that is expected here.)
  TERM=dumb redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    > "$LOGS/redis-cluster-create.log" 2>&1 \
    || die "redis-cli --cluster create failed; see $LOGS/redis-cluster-create.log"
}

# Prints what keeps the Redis Cluster from being healthy, or nothing. Healthy: every
# node says cluster_state:ok, redis-cli's check finds all nodes agreeing on the slots
# and every slot covered, and every master serving slots has a connected replica.
redis_cluster_problem() {
  local port first=${REDIS_NODES[0]} state check lonely
  for port in "${REDIS_NODES[@]}"; do
    state=$(cluster_info_field "$port" cluster_state)
    [ "$state" = ok ] || { echo "127.0.0.1:$port says cluster_state:${state:-?}"; return 0; }
  done
  if ! check=$(TERM=dumb redis-cli --cluster check "127.0.0.1:$first" 2>&1) \
    || ! grep -q 'All nodes agree about slots configuration' <<< "$check" \
    || ! grep -q 'All 16384 slots covered' <<< "$check"; then
    echo "redis-cli --cluster check: $(grep -m 1 -E '\[(ERR|WARNING)\]' <<< "$check" || echo 'not ok')"
    return 0
  fi
  # cluster nodes: id addr flags master-id ping pong epoch link-state slots...
  lonely=$(redis-cli -p "$first" cluster nodes | tr -d '\r' | awk '
    $3 ~ /master/ && $3 !~ /fail/ && NF >= 9 { a = $2; sub(/@.*/, "", a); masters[$1] = a }
    $3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected" { replicas[$4]++ }
    END { for (m in masters) if (!(m in replicas)) printf "%s ", masters[m] }')
  [ -z "$lonely" ] || echo "master(s) without a replica: $lonely"
}

wait_redis_cluster() {
  local problem deadline=$((SECONDS + 30))
  while :; do
    problem=$(redis_cluster_problem)
    [ -n "$problem" ] || break
    [ "$SECONDS" -lt "$deadline" ] || die "the Redis Cluster is not healthy after 30 s: $problem; \
see $LOGS/redis-*.log"
    sleep 0.5
  done
  say "redis cluster is ready: cluster_state:ok, 3 masters with a replica each"
}

# ---- the cluster variant: commands ---------------------------------------------------------

cluster_up() {
  local n port starting_kafka=() starting_redis=() already=()
  ensure_redis
  # Which processes are missing, and are their ports free? Nothing starts until all are.
  for n in "${KAFKA_NODES[@]}"; do
    if alive "kafka-$n" "$(cluster_kafka_pattern "$n")"; then
      already+=("kafka-$n")
      continue
    fi
    for port in "$(cluster_kafka_port "$n")" "$(cluster_controller_port "$n")"; do
      port_open "$port" && die "port $port (kafka-$n) is taken by a process this stack did not \
start; stop it or choose other ports with SCORER_CLUSTER_KAFKA_PORT / SCORER_CLUSTER_CONTROLLER_PORT"
    done
    starting_kafka+=("$n")
  done
  for port in "${REDIS_NODES[@]}"; do
    if alive "redis-$port" "$(cluster_redis_pattern "$port")"; then
      already+=("redis-$port")
      continue
    fi
    port_open "$port" && die "port $port (redis-$port) is taken by a process this stack did not \
start; stop it or choose other ports with SCORER_CLUSTER_REDIS_PORT"
    starting_redis+=("$port")
  done
  if [ ${#already[@]} -gt 0 ]; then
    if [ ${#starting_kafka[@]} -eq 0 ] && [ ${#starting_redis[@]} -eq 0 ]; then
      say "the cluster is already running (${already[*]})"
    else
      say "already running: ${already[*]}"
    fi
  fi

  # Kafka first: its JVMs take longest, and they start up while Redis is set up.
  if [ ${#starting_kafka[@]} -gt 0 ]; then
    fetch_kafka
    for n in "${starting_kafka[@]}"; do write_cluster_kafka_config "$n"; done
    format_cluster_kafka "${starting_kafka[@]}"
    for n in "${starting_kafka[@]}"; do start_cluster_kafka_node "$n"; done
  fi
  for port in "${starting_redis[@]}"; do start_cluster_redis_node "$port"; done
  for port in "${starting_redis[@]}"; do
    wait_redis "redis-$port" "$(cluster_redis_pattern "$port")" "$port" "$LOGS/redis-$port.log" 30
  done
  ensure_redis_cluster
  wait_redis_cluster
  wait_cluster_kafka
  say "cluster ready: SCORER_KAFKA_BOOTSTRAP=$(cluster_bootstrap)" \
    "SCORER_REDIS_URL=redis://127.0.0.1:${REDIS_NODES[0]}/0 SCORER_REDIS_CLUSTER=true"
}

# NAME PATTERN pairs of the cluster's processes, for stop_processes.
cluster_kafka_processes() {
  local n
  for n in "${KAFKA_NODES[@]}"; do echo "kafka-$n"; cluster_kafka_pattern "$n"; done
}
cluster_redis_processes() {
  local port
  for port in "${REDIS_NODES[@]}"; do echo "redis-$port"; cluster_redis_pattern "$port"; done
}

# The three Kafka nodes get SIGTERM together. One by one, the last node would lose its
# quorum and then wait (up to 5 minutes) for a controller to approve its controlled
# shutdown; together, the active controller approves all three at once.
cluster_down() {
  local pairs
  mapfile -t pairs < <(cluster_kafka_processes)
  stop_processes "${pairs[@]}"
  mapfile -t pairs < <(cluster_redis_processes)
  stop_processes "${pairs[@]}"
}

cluster_status() {
  local ok=0 n port state
  for n in "${KAFKA_NODES[@]}"; do
    if alive "kafka-$n" "$(cluster_kafka_pattern "$n")"; then
      say "kafka-$n: running (pid $(cat "$RUN/kafka-$n.pid"), 127.0.0.1:$(cluster_kafka_port "$n"))"
    else
      say "kafka-$n: stopped"; ok=1
    fi
  done
  for port in "${REDIS_NODES[@]}"; do
    if alive "redis-$port" "$(cluster_redis_pattern "$port")"; then
      say "redis-$port: running (pid $(cat "$RUN/redis-$port.pid"), 127.0.0.1:$port)"
      state=${state:-$(cluster_info_field "$port" cluster_state)}
    else
      say "redis-$port: stopped"; ok=1
    fi
  done
  [ -z "${state:-}" ] || say "redis cluster: cluster_state:$state"
  return $ok
}

# ---- commands -------------------------------------------------------------------------

status() {
  local ok=0
  if alive kafka kafka.Kafka; then
    say "kafka: running (pid $(cat "$RUN/kafka.pid"), 127.0.0.1:$KAFKA_PORT)"
  else
    say "kafka: stopped"; ok=1
  fi
  if alive redis redis-server; then
    say "redis: running (pid $(cat "$RUN/redis.pid"), 127.0.0.1:$REDIS_PORT)"
  else
    say "redis: stopped"; ok=1
  fi
  return $ok
}

# The settings a client of this variant needs, as lines for eval.
print_env() {
  if [ "$VARIANT" = cluster ]; then
    echo "export SCORER_KAFKA_BOOTSTRAP=$(cluster_bootstrap)"
    echo "export SCORER_REDIS_URL=redis://127.0.0.1:${REDIS_NODES[0]}/0"
    echo "export SCORER_REDIS_CLUSTER=true"
    echo "export SCORER_TOPIC_REPLICATION=3"
  else
    echo "export SCORER_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "export SCORER_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    echo "export SCORER_REDIS_CLUSTER=false"
    echo "export SCORER_TOPIC_REPLICATION=1"
  fi
}

usage() { echo "usage: [SCORER_STACK=single|cluster] $0 up|down|status|reset|env" >&2; exit 2; }

case "$VARIANT" in
  single) ;;
  cluster) LOGS=$CLUSTER_DIR/logs RUN=$CLUSTER_DIR/run ;;
  *) die "SCORER_STACK is '$VARIANT'; it must be single (the default) or cluster" ;;
esac
[ "${1:-}" = env ] && { print_env; exit 0; }

mkdir -p "$LOGS" "$RUN"
case "$VARIANT:${1:-}" in
  single:up)
    start_redis
    start_kafka
    wait_kafka
    ;;
  single:down)
    stop_process kafka kafka.Kafka
    stop_process redis redis-server
    ;;
  single:status)
    status
    ;;
  single:reset)
    stop_process kafka kafka.Kafka
    stop_process redis redis-server
    rm -rf "$STACK_DIR/kafka" "$STACK_DIR/redis"
    say "removed the Kafka and Redis data under $STACK_DIR"
    ;;
  cluster:up)
    cluster_up
    ;;
  cluster:down)
    cluster_down
    ;;
  cluster:status)
    cluster_status
    ;;
  cluster:reset)
    cluster_down
    rm -rf "$CLUSTER_DIR"/kafka-[0-9]* "$CLUSTER_DIR"/redis-[0-9]* "$CLUSTER_DIR/kafka-cluster-id"
    say "removed the cluster's Kafka and Redis data under $CLUSTER_DIR"
    ;;
  *)
    usage
    ;;
esac
