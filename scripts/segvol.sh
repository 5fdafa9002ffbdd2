#!/usr/bin/env bash
# SegVol text/box/point-prompted volumetric SAM on M3D-Seg
# Usage: bash scripts/segvol.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/segvol.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/segvol.yaml "$@"
