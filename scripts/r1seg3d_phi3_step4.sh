#!/usr/bin/env bash
# R1Seg-3D Phi-3-mini step 4 (LoRA + seg_projector + prompt encoder + mask decoder)
# Usage: bash scripts/r1seg3d_phi3_step4.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/r1seg3d_phi3_step4.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/r1seg3d_phi3_step4.yaml "$@"
