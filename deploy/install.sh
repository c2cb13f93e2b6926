#!/usr/bin/env bash
# Install edge on an inspection station: service user, directories, venv, configuration, backbone
# weights (checked), systemd units, udev rule. Run from a checkout of the repository, as root.
#
#   sudo deploy/install.sh --config my-station.yaml [--weights wide_resnet50_2-95faca4d.pth]
#                          [--tensorrt] [--aravis] [--prefix /opt/edge] [--dry-run]
#
# --dry-run prints every step instead of doing it (no root needed). Exit codes: 0 installed,
# 2 bad usage, 3 weights file wrong, 6 configuration invalid, 1 a step failed.
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/edge
CONFIG=""
WEIGHTS=""
TENSORRT=0
ARAVIS=0
DRY=0
WEIGHTS_NAME=wide_resnet50_2-95faca4d.pth
WEIGHTS_SHA_PREFIX=95faca4d

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="$2"; shift 2 ;;
        --weights) WEIGHTS="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --tensorrt) TENSORRT=1; shift ;;
        --aravis) ARAVIS=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done

run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }
step() { echo "== $*"; }

if [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or with --dry-run to see the steps)" >&2; exit 2
fi
if [ -n "$CONFIG" ] && [ ! -f "$CONFIG" ]; then echo "configuration $CONFIG does not exist" >&2; exit 2; fi
if [ -n "$WEIGHTS" ]; then
    [ -f "$WEIGHTS" ] || { echo "weights file $WEIGHTS does not exist" >&2; exit 3; }
    sha="$(sha256sum "$WEIGHTS" | cut -c1-8)"
    if [ "$sha" != "$WEIGHTS_SHA_PREFIX" ]; then
        echo "$WEIGHTS has SHA-256 $sha..., not $WEIGHTS_SHA_PREFIX...: it is not torchvision's" \
             "wide_resnet50_2 IMAGENET1K_V1 file ($WEIGHTS_NAME); IMAGENET1K_V2 (9ba9bcbe) is not it either" >&2
        exit 3
    fi
fi

step "service user edge (groups video, render where it exists)"
groups=video
getent group render >/dev/null && groups="video,render"
if ! id edge >/dev/null 2>&1; then
    run useradd --system --home-dir /var/lib/edge --shell /usr/sbin/nologin --groups "$groups" edge
else
    run usermod --append --groups "$groups" edge
fi

step "directories: /etc/edge (configuration, keys), /var/lib/edge (banks, weights)"
run install -d -o root -g edge -m 0750 /etc/edge /etc/edge/keys
run install -d -o edge -g edge -m 0750 /var/lib/edge /var/lib/edge/banks /var/lib/edge/torch/hub/checkpoints

if [ "$ARAVIS" = 1 ]; then
    step "Aravis for GigE Vision cameras (its typelib from the system; PyGObject is built in the venv)"
    run apt-get install -y --no-install-recommends gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev \
        pkg-config
fi

step "virtual environment $PREFIX/venv with edge, its PLC, MQTT and OPC UA bridges and edge-view"
extras=station,plc,mqtt,opcua,view
[ "$ARAVIS" = 1 ] && extras=station,plc,mqtt,opcua,view,gige
run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
run "$PREFIX/venv/bin/pip" install --quiet "$SOURCE[$extras]"
if [ "$TENSORRT" = 1 ]; then
    step "TensorRT (optional; needs the GPU vendor's package index)"
    run "$PREFIX/venv/bin/pip" install --quiet "$SOURCE[gpu]" onnxruntime-gpu \
        || echo "TensorRT could not be installed: use worker.extractor torch (fp16 on the GPU)"
fi

step "backbone weights"
if [ -n "$WEIGHTS" ]; then
    run install -o edge -g edge -m 0640 "$WEIGHTS" "/var/lib/edge/torch/hub/checkpoints/$WEIGHTS_NAME"
fi
run sh -c "echo TORCH_HOME=/var/lib/edge/torch > /etc/edge/edge.env"
echo "efficientnet_lite0 ships with edge; wide_resnet50_2 needs /var/lib/edge/torch/hub/checkpoints/$WEIGHTS_NAME"

step "configuration /etc/edge/station.yaml"
if [ -n "$CONFIG" ]; then
    run install -o root -g edge -m 0640 "$CONFIG" /etc/edge/station.yaml
elif [ ! -f /etc/edge/station.yaml ]; then
    run install -o root -g edge -m 0640 "$SOURCE/deploy/examples/usb-camera.yaml" /etc/edge/station.yaml
    echo "installed the USB camera example: edit /etc/edge/station.yaml for this station"
fi

step "systemd units and udev rule"
for unit in "$SOURCE"/systemd/edge*; do
    run sh -c "sed 's|/opt/edge/venv|$PREFIX/venv|g' '$unit' > /etc/systemd/system/$(basename "$unit")"
done
run install -m 0644 "$SOURCE/deploy/udev/70-edge-cameras.rules" /etc/udev/rules.d/70-edge-cameras.rules
run udevadm control --reload-rules
run systemctl daemon-reload

step "check the configuration (as the service user) and enable its units (edge-run --units: one table)"
if [ "$DRY" = 0 ]; then
    runuser -u edge -- env TORCH_HOME=/var/lib/edge/torch "$PREFIX/venv/bin/edge-run" /etc/edge/station.yaml --check-config \
        || { echo "fix /etc/edge/station.yaml, then run this script again" >&2; exit 6; }
    units="$("$PREFIX/venv/bin/edge-run" /etc/edge/station.yaml --units)"
else
    echo "+ edge-run /etc/edge/station.yaml --check-config"
    # a dry run lists the units of --config with an edge-run already on PATH (a checkout's venv)
    if [ -n "$CONFIG" ] && command -v edge-run >/dev/null; then
        units="$(edge-run "$CONFIG" --units)" || exit 6
    else
        units="edge.target edge-publisher.service edge-worker.service edge-capture@<camera>.service"
    fi
fi
for unit in $units; do run systemctl enable "$unit"; done

cat <<EOT
== installed. Next:
   1. calibrate on good parts:  sudo -u edge $PREFIX/venv/bin/edge-capture /etc/edge/station.yaml --camera <name> &
                                sudo -u edge $PREFIX/venv/bin/edge-calibrate --config /etc/edge/station.yaml
   2. start the station:        systemctl start edge.target
   3. watch it:                 journalctl -fu 'edge-*'   and   $PREFIX/venv/bin/edge-tail tcp://localhost:5556
EOT
