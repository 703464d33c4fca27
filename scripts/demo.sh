#!/usr/bin/env bash
# make demo: resyncd on the embedded etcd, 3 demo agents x 3 plugins, one
# triggered round, then `resyncctl status`; runs until Ctrl-C, or for
# DEMO_SECONDS seconds when set. Everything it starts is stopped on exit.
set -euo pipefail
BIN=${BIN:-bin}
DATA=${DATA:-$(mktemp -d -t resync-demo-XXXXXX)}
CLIENT=${DEMO_CLIENT:-127.0.0.1:2379}
HTTP=${DEMO_HTTP:-127.0.0.1:9090}
LOGS=$DATA/logs
mkdir -p "$LOGS"
pids=()
cleanup() {
	trap - EXIT INT TERM
	echo
	echo "== stopping (logs were in $LOGS)"
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$DATA/etcd"
}
trap cleanup EXIT INT TERM

echo "== resyncd (embedded etcd on $CLIENT, HTTP on $HTTP, data in $DATA/etcd)"
"$BIN/resyncd" --data-dir "$DATA/etcd" --listen-client-url "http://$CLIENT" --http-addr "$HTTP" >"$LOGS/resyncd.log" 2>&1 &
pids+=($!)
ctl() { "$BIN/resyncctl" --endpoints "$CLIENT" "$@"; }
for _ in $(seq 1 100); do
	if "$BIN/resyncd" --probe "http://$HTTP/readyz" >/dev/null 2>&1; then break; fi
	sleep 0.2
done
"$BIN/resyncd" --probe "http://$HTTP/readyz" >/dev/null || { echo "resyncd did not become ready; see $LOGS/resyncd.log"; exit 1; }

for a in agent-1 agent-2 agent-3; do
	echo "== $a (plugins ifplugin,l3plugin,aclplugin; log $LOGS/$a.log)"
	"$BIN/resync-agent" --endpoints "$CLIENT" --name "$a" --plugins ifplugin,l3plugin,aclplugin --reload-time 100ms >"$LOGS/$a.log" 2>&1 &
	pids+=($!)
done
for _ in $(seq 1 100); do
	[ "$(ctl registrations -o json | grep -c '"plugin"')" -ge 9 ] && break
	sleep 0.2
done

echo "== resyncctl trigger --reason demo --wait"
ctl trigger --reason "demo" --wait
echo
echo "== resyncctl status"
ctl status
echo
echo "== resyncctl history"
ctl history
echo
if [ -n "${DEMO_SECONDS:-}" ]; then
	echo "== running for $DEMO_SECONDS s (try: $BIN/resyncctl --endpoints $CLIENT watch)"
	sleep "$DEMO_SECONDS"
else
	echo "== running; Ctrl-C to stop (try in another shell: $BIN/resyncctl --endpoints $CLIENT watch)"
	wait
fi
