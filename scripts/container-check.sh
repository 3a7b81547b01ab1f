#!/usr/bin/env bash
# Build the lfm2-edge image from nothing and prove it: /health and one chat on a synthetic model.
#
#   sudo scripts/container-check.sh [--work DIR] [--reuse] [--keep] [--jobs N] [--ca FILE]
#
# No image registry is needed: the base is a Debian bookworm root file system made by
# mmdebstrap (or debootstrap) from Debian's packages and imported as the BASE image.
# Then, with podman (its own storage under --work, vfs driver, so it needs neither
# overlayfs nor a daemon):
#   1. build the image (Dockerfile, --format docker so HEALTHCHECK is kept);
#   2. write the tiny synthetic LFM2-VL pair with the image's own `python -m lfm2_edge.testing`;
#   3. run `serve` on that pair mounted in read-only, with the image's default `--host 0.0.0.0`,
#      published on 127.0.0.1 only: wait for /health, run the image's HEALTHCHECK, one chat,
#      check the user is not root, stop it with SIGTERM and check it exits 0;
#   4. the compose example's flow: in one pod, `pull` the default model from a stand-in hub
#      (tests/hubstub.py, on the pod's loopback) into a volume, then the image's default
#      command (`serve`, HF_HUB_OFFLINE=1) from that volume; /health and one chat again.
# Figures (base and build seconds, image size) go to DIR/container-check.json.
#
# --reuse keeps the base and the storage of an earlier run, so an unchanged llama-cpp-python
# layer is not compiled again (a run from nothing compiles it: 52 minutes in all on 2 busy cores).
# Needs root, podman and mmdebstrap or debootstrap (Debian: apt-get install podman mmdebstrap),
# and network access to Debian's mirror and PyPI while it builds. Not part of `make test`:
# `make container-check` runs it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work="$repo/build/container" reuse=0 keep=0 jobs=$(nproc) ca=
suite=bookworm mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --work) work=$2; shift 2 ;;
        --reuse) reuse=1; shift ;;
        --keep) keep=1; shift ;;
        --jobs) jobs=$2; shift 2 ;;
        --ca) ca=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (podman with its own storage, mmdebstrap)" >&2; exit 2; }
command -v podman >/dev/null || { echo "error: podman not found (apt-get install podman)" >&2; exit 2; }
if command -v mmdebstrap >/dev/null; then bootstrap=mmdebstrap
elif command -v debootstrap >/dev/null; then bootstrap=debootstrap
else echo "error: neither mmdebstrap nor debootstrap found (apt-get install mmdebstrap)" >&2; exit 2; fi

mkdir -p "$work"
work=$(cd "$work" && pwd)
log="$work/container-check.log"
: > "$log"
say() { echo "== $*" | tee -a "$log"; }
fail() { echo "FAIL: $*" | tee -a "$log" >&2; exit 1; }

if [ "$reuse" = 0 ]; then
    # From nothing: no base, no layers, no volumes of an earlier run.
    [ -d "$work/storage" ] && podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs \
        system reset --force >/dev/null 2>&1 || true
    rm -rf "$work/storage" "$work/run" "$work/base" "$work/models"
fi
mkdir -p "$work/storage" "$work/run" "$work/base" "$work/models"

# podman's own configuration, for this run only: storage under $work (vfs: no overlayfs
# needed), ulimits this machine allows, runc where it is installed (crun refuses hybrid
# cgroup hierarchies), cgroupfs (no systemd needed).
cat > "$work/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$work/storage"
runroot = "$work/run"
EOF
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
runtime_line=""
command -v runc >/dev/null && runtime_line='runtime = "runc"'
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
$runtime_line
EOF
export CONTAINERS_STORAGE_CONF="$work/storage.conf" CONTAINERS_CONF="$work/containers.conf"

base_image=localhost/lfm2-edge-base:$suite
image=localhost/lfm2-edge:check
pod=lfm2-check
volume=lfm2-check-hf
cleanup() {
    [ "$keep" = 1 ] && return
    podman pod rm -f "$pod" >/dev/null 2>&1 || true
    podman rm -f lfm2-check-serve >/dev/null 2>&1 || true
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# ---- 1. the base image, from Debian's packages
base_s=0
if ! podman image exists "$base_image"; then
    say "base: $bootstrap $suite (minbase) from $mirror"
    start=$(date +%s)
    rm -rf "$work/base/rootfs" "$work/base/$suite.tar"
    if [ "$bootstrap" = mmdebstrap ]; then
        nice -n 10 mmdebstrap --variant=minbase --include=ca-certificates "$suite" "$work/base/$suite.tar" \
            "deb $mirror $suite main" "deb $mirror $suite-updates main" \
            "deb ${mirror%/debian}/debian-security $suite-security main" >>"$log" 2>&1
    else
        nice -n 10 debootstrap --variant=minbase --include=ca-certificates "$suite" "$work/base/rootfs" "$mirror" >>"$log" 2>&1
        tar -C "$work/base/rootfs" -cf "$work/base/$suite.tar" .
        rm -rf "$work/base/rootfs"
    fi
    podman import --change 'CMD ["/bin/bash"]' "$work/base/$suite.tar" "$base_image" >>"$log" 2>&1
    rm -f "$work/base/$suite.tar"
    base_s=$(( $(date +%s) - start ))
    say "base: ${base_s} s"
fi

# ---- 2. the image
# Behind a TLS-intercepting proxy pip trusts a CA the base image lacks: hand the build the
# bundle pip uses here (--ca FILE, else $PIP_CERT) as a secret; it is not stored in the image.
secret=()
ca=${ca:-${PIP_CERT:-}}
if [ -n "$ca" ]; then
    [ -s "$ca" ] || fail "CA bundle $ca is not a readable file"
    secret=(--secret "id=pip-ca,src=$ca")
fi
say "build: podman build --format docker --build-arg BASE=$base_image (JOBS=$jobs${ca:+, CA bundle $ca as a secret})"
start=$(date +%s)
nice -n 10 podman build --format docker --layers --build-arg BASE="$base_image" --build-arg JOBS="$jobs" \
    "${secret[@]}" -t "$image" "$repo" >>"$log" 2>&1 || fail "podman build (see $log)"
build_s=$(( $(date +%s) - start ))
image_bytes=$(podman image inspect --format '{{.Size}}' "$image")
say "build: ${build_s} s; image $(( image_bytes / 1048576 )) MiB"
podman image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -q '/health' \
    || fail "the image has no HEALTHCHECK on /health"
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = lfm2 ] || fail "the image does not run as lfm2"

# ---- 3. serve the synthetic pair mounted in
say "models: python -m lfm2_edge.testing --shape tiny --quant Q4_0, in the image"
chmod 0777 "$work/models"
podman run --rm --entrypoint python3 -v "$work/models:/models" "$image" \
    -m lfm2_edge.testing --shape tiny --quant Q4_0 --out /models >>"$log" 2>&1 || fail "writing the synthetic model"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

wait_health() {  # $1: container; waits for /health on 127.0.0.1:$port
    for _ in $(seq 1 120); do
        if python3 - "$port" <<'EOF' 2>/dev/null; then return 0; fi
import json, sys, urllib.request
body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2))
sys.exit(body.get("status") != "ok")
EOF
        [ "$(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || break
        sleep 1
    done
    podman logs "$1" >>"$log" 2>&1 || true
    fail "$1: /health did not answer (see $log)"
}
chat() {  # one chat on 127.0.0.1:$port; prints the answer
    python3 - "$port" "$1" <<'EOF'
import json, sys, urllib.request
port, model = sys.argv[1], sys.argv[2]
body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=120))
text = out["choices"][0]["message"]["content"]
assert isinstance(text, str) and out["usage"]["completion_tokens"] >= 1, out
print(json.dumps({"content": text, "usage": out["usage"]}))
EOF
}

say "serve: the pair mounted at /models (read-only), published on 127.0.0.1:$port"
podman run -d --name lfm2-check-serve -p "127.0.0.1:$port:8000" -v "$work/models:/models:ro" "$image" \
    serve /models/model-Q4_0.gguf --mmproj /models/mmproj-F16.gguf --host 0.0.0.0 --port 8000 --ctx 2048 \
    >>"$log" 2>&1 || fail "podman run"
wait_health lfm2-check-serve
podman healthcheck run lfm2-check-serve >>"$log" 2>&1 || fail "the image's HEALTHCHECK failed on a healthy server"
say "health: ok (and the HEALTHCHECK passes)"
answer=$(chat model-Q4_0) || { podman logs lfm2-check-serve >>"$log" 2>&1; fail "chat"; }
say "chat: $answer"
uid=$(podman exec lfm2-check-serve id -u)
[ "$uid" != 0 ] || fail "serve runs as root"
podman stop -t 60 lfm2-check-serve >>"$log" 2>&1
code=$(podman inspect --format '{{.State.ExitCode}}' lfm2-check-serve)
[ "$code" = 0 ] || { podman logs lfm2-check-serve >>"$log" 2>&1; fail "serve exited $code on SIGTERM"; }
say "user: uid $uid; SIGTERM: exit 0"
podman rm -f lfm2-check-serve >>"$log" 2>&1  # (podman notes on stderr that it has no systemd timer to remove)

# ---- 4. the compose example's flow: pull into the volume, then the default command offline
say "compose flow: pull LFM2-VL-450M:Q4_0 from a stand-in hub into volume $volume, then the default serve"
podman volume create "$volume" >/dev/null
podman pod create --name "$pod" -p "127.0.0.1:$port:8000" >/dev/null
podman run -d --pod "$pod" --name lfm2-check-hub --entrypoint python3 -e PYTHONPATH=/src \
    -v "$repo/tests:/src/tests:ro" -v "$work/models:/models:ro" "$image" -m tests.hubstub /models --port 8765 \
    >>"$log" 2>&1
sleep 2
podman run --rm --pod "$pod" -v "$volume:/data" -e HF_ENDPOINT=http://127.0.0.1:8765 "$image" \
    pull LFM2-VL-450M:Q4_0 >>"$log" 2>&1 || fail "pull into the volume"
podman run -d --pod "$pod" --name lfm2-check-default -v "$volume:/data" -e HF_HUB_OFFLINE=1 "$image" >>"$log" 2>&1
wait_health lfm2-check-default
answer2=$(chat LFM2-VL-450M) || { podman logs lfm2-check-default >>"$log" 2>&1; fail "chat (compose flow)"; }
say "compose flow: /health ok; chat: $answer2"

python3 - "$work/container-check.json" "$base_s" "$build_s" "$image_bytes" "$jobs" "$answer" <<'EOF'
import json, os, platform, sys
path, base_s, build_s, size, jobs, answer = sys.argv[1:]
json.dump({"base_s": int(base_s), "build_s": int(build_s), "image_bytes": int(size),
           "image_mib": round(int(size) / 2**20, 1), "jobs": int(jobs), "cpus": os.cpu_count(),
           "machine": platform.machine(), "chat": json.loads(answer), "ok": True}, open(path, "w"), indent=2)
EOF
say "ok: $(cat "$work/container-check.json" | tr -d '\n' | tr -s ' ')"
