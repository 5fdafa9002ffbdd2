#!/usr/bin/env bash
# tiny R1Seg-3D (shared tiny ViT3D, SegVol-tiny decoder, Phi-3-style 2x128 LLM) on phantoms
# Usage: bash scripts/tiny_r1seg3d.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_r1seg3d.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_r1seg3d.yaml "$@"
