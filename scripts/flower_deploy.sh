#!/usr/bin/env bash
# Flower deployment engine on this machine: a TLS SuperLink, N authenticated SuperNodes (separate
# processes), one `flwr run` of the zorba app, then every process stopped by pid.
# Usage: scripts/flower_deploy.sh [--clients 3] [--rounds 1] [--model minilm] [--out runs/flower-deploy] ...
# (all options: python -m zorba.flower.deploy --help). Real machines: docs/flower.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m zorba.flower.deploy "$@"
