#!/usr/bin/env bash
# M3D-LaMed Phi-3-mini with the SegVol [SEG] head (LoRA + tower/projector/embeddings/head/seg)
# Usage: bash scripts/m3d_lamed_seg_phi3.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/m3d_lamed_seg_phi3.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/m3d_lamed_seg_phi3.yaml "$@"
