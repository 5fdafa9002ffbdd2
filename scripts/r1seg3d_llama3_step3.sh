#!/usr/bin/env bash
# R1Seg-3D Llama-3.1-8B step 3
# Usage: bash scripts/r1seg3d_llama3_step3.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/r1seg3d_llama3_step3.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/r1seg3d_llama3_step3.yaml "$@"
