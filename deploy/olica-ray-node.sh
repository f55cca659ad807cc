#!/bin/sh
# Start one pod's part of a multi-node vLLM server (deploy/k8s/multinode/leaderworkerset.yaml).
#
#   olica-ray-node leader <vllm serve arguments...>
#       starts the Ray head, waits until the whole group (LWS_GROUP_SIZE pods) has
#       joined, then runs `vllm serve <arguments> --distributed-executor-backend ray`
#       in the foreground: the pod lives as long as the server.
#   olica-ray-node worker
#       joins the leader's Ray cluster at $LWS_LEADER_ADDRESS and blocks.
#
# The LeaderWorkerSet controller sets LWS_LEADER_ADDRESS and LWS_GROUP_SIZE in every pod.
# Fixed Ray ports (RAY_PORT, RAY_NODE_MANAGER_PORT, RAY_OBJECT_MANAGER_PORT) let the
# probes and the NetworkPolicy name them.
set -eu

RAY_PORT=${RAY_PORT:-6379}
RAY_NODE_MANAGER_PORT=${RAY_NODE_MANAGER_PORT:-6380}
RAY_OBJECT_MANAGER_PORT=${RAY_OBJECT_MANAGER_PORT:-6381}
RAY_JOIN_TIMEOUT_S=${RAY_JOIN_TIMEOUT_S:-900}
: "${LWS_GROUP_SIZE:?set by the LeaderWorkerSet controller}"

role=${1:-}
[ $# -gt 0 ] && shift

case "$role" in
  leader)
    ray start --head --port="$RAY_PORT" \
      --node-manager-port="$RAY_NODE_MANAGER_PORT" \
      --object-manager-port="$RAY_OBJECT_MANAGER_PORT" \
      --include-dashboard=false --disable-usage-stats
    python3 - "$LWS_GROUP_SIZE" "$RAY_JOIN_TIMEOUT_S" <<'PY'
import sys
import time

import ray

want, timeout = int(sys.argv[1]), float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
deadline = time.monotonic() + timeout
while True:
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    if alive >= want:
        print(f"olica-ray-node: {alive}/{want} Ray nodes up", flush=True)
        break
    if time.monotonic() > deadline:
        sys.exit(f"olica-ray-node: only {alive}/{want} Ray nodes joined in {timeout:.0f} s")
    time.sleep(5)
ray.shutdown()
PY
    exec vllm serve "$@" --distributed-executor-backend ray
    ;;
  worker)
    : "${LWS_LEADER_ADDRESS:?set by the LeaderWorkerSet controller}"
    exec ray start --address="$LWS_LEADER_ADDRESS:$RAY_PORT" \
      --node-manager-port="$RAY_NODE_MANAGER_PORT" \
      --object-manager-port="$RAY_OBJECT_MANAGER_PORT" \
      --disable-usage-stats --block
    ;;
  *)
    echo "usage: olica-ray-node leader <vllm serve arguments...> | olica-ray-node worker" >&2
    exit 2
    ;;
esac
