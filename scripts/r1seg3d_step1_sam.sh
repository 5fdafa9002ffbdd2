#!/usr/bin/env bash
# R1Seg-3D step 1 (unified ViT + text-prompted SAM decoder on M3D-Seg)
# Usage: bash scripts/r1seg3d_step1_sam.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/r1seg3d_step1_sam.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/r1seg3d_step1_sam.yaml "$@"
