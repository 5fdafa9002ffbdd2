#!/usr/bin/env bash
# M3D-LaMed Phi-3-mini stage 2 (LoRA + vision/projector/embeddings/head)
# Usage: bash scripts/m3d_lamed_phi3_stage2.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/m3d_lamed_phi3_stage2.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/m3d_lamed_phi3_stage2.yaml "$@"
