#!/usr/bin/env bash
# Apache Kafka in KRaft mode (one broker that is its own controller) from the official jars on Maven
# Central: no Docker, no tarball. Needs Java 17+ and Maven. The version is the one compose.yaml uses.
#
#   scripts/kafka.sh fetch                   jars into .cache/kafka/<version>/lib (once; then offline)
#   scripts/kafka.sh run DIR PORT CTRL_PORT  format DIR if new, run the broker in the foreground
#   scripts/kafka.sh start DIR [PORT]        the same in the background; prints host:port when it answers
#   scripts/kafka.sh stop DIR                stop the broker started with `start DIR`
#
# Settings are tuned for tests: no auto-created topics (as in compose.yaml), replication 1, no initial
# rebalance delay, 512 MB heap; KAFKA_SERVER_PROPERTIES (lines of key=value) overrides them, e.g.
# KAFKA_SERVER_PROPERTIES=group.initial.rebalance.delay.ms=3000 for a production default. Logs: DIR/server.log.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${KAFKA_VERSION:-$(sed -n 's|^ *image: apache/kafka:\([0-9.]*\).*|\1|p' "$ROOT/compose.yaml")}"
CACHE="${EVENTLAB_KAFKA_CACHE:-$ROOT/.cache/kafka}/$VERSION"
LIB="$CACHE/lib"
JAVA="${JAVA:-java}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
    [ -n "$VERSION" ] || die "no apache/kafka image version found in compose.yaml"
    [ -f "$LIB/.complete" ] && return 0
    command -v "$JAVA" >/dev/null || die "Java 17 or newer is needed (apt-get install openjdk-17-jre-headless)"
    command -v mvn >/dev/null || die "Maven is needed to fetch the Kafka jars (apt-get install maven)"
    rm -rf "$LIB"
    local args=(-B -q -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" -Dkafka.version="$VERSION"
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB")
    # Offline first: after one download Maven's repository (~/.m2) has everything.
    if ! mvn -o "${args[@]}" >/dev/null 2>&1; then
        echo "kafka.sh: fetching Apache Kafka $VERSION from Maven Central (about 45 MB, once)" >&2
        mvn "${args[@]}" || die "could not fetch org.apache.kafka:kafka_2.13:$VERSION with Maven"
    fi
    touch "$LIB/.complete"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

configure() {  # DIR PORT CTRL_PORT -> DIR/server.properties
    local dir="$1" port="$2" ctrl="$3"
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
${KAFKA_SERVER_PROPERTIES:-}
PROPS
    cat >"$dir/log4j2.properties" <<PROPS
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
PROPS
}

storage() {  # DIR: a formatted log directory, copied from a template formatted once per version
    local dir="$1" template="$CACHE/formatted"
    [ -f "$dir/data/meta.properties" ] && return 0
    if [ ! -f "$template/data/meta.properties" ]; then
        rm -rf "$template" && mkdir -p "$template"
        configure "$template" 9092 9093
        local id  # base64url of 16 random bytes; it may begin with "-", hence --cluster-id=
        id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
        "$JAVA" -cp "$LIB/*" -Dlog4j2.configurationFile="$template/log4j2.properties" \
            kafka.tools.StorageTool format --cluster-id="$id" -c "$template/server.properties" >/dev/null ||
            die "formatting the KRaft storage failed"
    fi
    mkdir -p "$dir/data" && cp -a "$template/data/." "$dir/data/"
}

run() {  # DIR PORT CTRL_PORT
    local dir port ctrl
    dir="$(mkdir -p "$1" && cd "$1" && pwd)" port="$2" ctrl="$3"
    fetch
    configure "$dir" "$port" "$ctrl"
    storage "$dir"
    exec "$JAVA" -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIB/*" kafka.Kafka "$dir/server.properties"
}

start() {  # DIR [PORT]
    local dir port ctrl
    dir="$(mkdir -p "$1" && cd "$1" && pwd)" port="${2:-$(free_port)}" ctrl="$(free_port)"
    fetch
    "$0" run "$dir" "$port" "$ctrl" >"$dir/console.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
    for _ in $(seq 1 300); do
        kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null || die "the broker exited; see $dir/console.log"
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "127.0.0.1:$port"
            return 0
        fi
        sleep 0.1
    done
    die "the broker did not listen on 127.0.0.1:$port in 30 s; see $dir/server.log"
}

stop() {  # DIR
    local pidfile="$1/kafka.pid" pid
    [ -f "$pidfile" ] || die "no broker started in $1"
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

case "${1:-}" in
    fetch) fetch ;;
    run) [ $# -eq 4 ] || die "usage: $0 run DIR PORT CONTROLLER_PORT"; run "$2" "$3" "$4" ;;
    start) [ $# -ge 2 ] || die "usage: $0 start DIR [PORT]"; start "$2" "${3:-}" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
