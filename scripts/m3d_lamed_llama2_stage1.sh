#!/usr/bin/env bash
# M3D-LaMed Llama-2-7B stage 1 (projector + embeddings)
# Usage: bash scripts/m3d_lamed_llama2_stage1.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/m3d_lamed_llama2_stage1.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/m3d_lamed_llama2_stage1.yaml "$@"
