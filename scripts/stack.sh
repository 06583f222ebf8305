#!/usr/bin/env bash
# The local stack: a single-node Apache Kafka broker (KRaft) and a redis-server, both
# on 127.0.0.1, installed on first use. Usage: stack.sh up|down|status|reset
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-3.9.1}
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

say() { echo "stack: $*"; }
die() { echo "stack: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A pidfile counts only while its process is alive and is still the one we started.
alive() {
  local name=$1 pattern=$2 pid
  [ -f "$RUN/$name.pid" ] || return 1
  pid=$(cat "$RUN/$name.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

stop_process() {
  local name=$1 pattern=$2 pid
  if ! alive "$name" "$pattern"; then
    rm -f "$RUN/$name.pid"
    say "$name is not running"
    return 0
  fi
  pid=$(cat "$RUN/$name.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$name.pid"
  say "$name stopped"
}

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

kafka_java() {
  exec java -Xmx"$KAFKA_HEAP" -Xms128m -XX:+UseSerialGC \
    -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$ROOT/scripts/stack/log4j.properties" \
    -Dkafka.logs.file="$LOGS/kafka.log" \
    -cp "$LIBS/*" "$@"
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
    cluster_id=$( (kafka_java kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -n 1)
    (kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$STACK_DIR/kafka/server.properties") > "$LOGS/kafka-format.log" 2>&1 \
      || die "formatting the Kafka log directory failed; see $LOGS/kafka-format.log"
  fi
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (heap $KAFKA_HEAP)"
  (kafka_java kafka.Kafka "$STACK_DIR/kafka/server.properties") \
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
  # among small counters) in the compact listpack encoding, as docker-compose.yml does.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STACK_DIR/redis" \
    --logfile "$LOGS/redis.log" --save "" --appendonly no --daemonize no \
    --maxmemory-policy noeviction --hash-max-listpack-value 1024 > /dev/null 2>&1 < /dev/null &
  echo $! > "$RUN/redis.pid"
  for _ in $(seq 1 50); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && { say "redis is ready on 127.0.0.1:$REDIS_PORT"; return 0; }
    alive redis redis-server || die "redis exited; see $LOGS/redis.log"
    sleep 0.2
  done
  die "redis did not answer PING within 10 s; see $LOGS/redis.log"
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

mkdir -p "$LOGS" "$RUN"
case "${1:-}" in
  up)
    start_redis
    start_kafka
    wait_kafka
    ;;
  down)
    stop_process kafka kafka.Kafka
    stop_process redis redis-server
    ;;
  status)
    status
    ;;
  reset)
    stop_process kafka kafka.Kafka
    stop_process redis redis-server
    rm -rf "$STACK_DIR/kafka" "$STACK_DIR/redis"
    say "removed the Kafka and Redis data under $STACK_DIR"
    ;;
  *)
    echo "usage: $0 up|down|status|reset" >&2
    exit 2
    ;;
esac
