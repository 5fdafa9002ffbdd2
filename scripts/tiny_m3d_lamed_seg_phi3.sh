#!/usr/bin/env bash
# tiny twin of m3d_lamed_seg_phi3.yaml
# Usage: bash scripts/tiny_m3d_lamed_seg_phi3.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_m3d_lamed_seg_phi3.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_m3d_lamed_seg_phi3.yaml "$@"
