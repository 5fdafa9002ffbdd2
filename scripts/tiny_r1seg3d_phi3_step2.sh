#!/usr/bin/env bash
# tiny twin of r1seg3d_phi3_step2.yaml
# Usage: bash scripts/tiny_r1seg3d_phi3_step2.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_r1seg3d_phi3_step2.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_r1seg3d_phi3_step2.yaml "$@"
