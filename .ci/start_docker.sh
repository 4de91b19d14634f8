#!/usr/bin/env bash
# Start a local Docker engine for the docker-marked tests and benchmarks, idempotently:
# - starts dockerd (vfs storage, no iptables, no bridge: containers get no network anyway)
#   unless `docker info` already answers;
# - waits (bounded) until it answers;
# - builds rlvr's default sandbox image (rlvr-python:3.11) from the host's Python if missing.
# Exit code 0 when the engine is ready and the image exists; non-zero with a message otherwise.
set -u
TAG="${RLVR_DOCKER_IMAGE:-rlvr-python:3.11}"
WAIT_S="${RLVR_DOCKER_WAIT_S:-60}"
PY="${PYTHON:-python}"

if ! command -v docker >/dev/null 2>&1; then
    echo "start_docker: docker CLI not found: apt-get install -y docker.io" >&2
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1; then
        echo "start_docker: dockerd not found: apt-get install -y docker.io" >&2
        exit 1
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        echo "start_docker: starting dockerd (log: /tmp/dockerd.log)"
        nohup dockerd --storage-driver vfs --iptables=false --bridge=none >/tmp/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 "$WAIT_S"); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "start_docker: dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
        tail -n 20 /tmp/dockerd.log >&2 2>/dev/null
        exit 1
    fi
fi
if ! docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "start_docker: building $TAG"
    "$PY" -m rlvr.sandboxes.docker build-image --tag "$TAG" || exit 1
fi
echo "start_docker: engine ready, image $TAG present"
