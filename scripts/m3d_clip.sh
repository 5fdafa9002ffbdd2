#!/usr/bin/env bash
# M3D-CLIP: ViT3D-B + BERT, InfoNCE with all-gather
# Usage: bash scripts/m3d_clip.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/m3d_clip.yaml)
# Tiny CPU twin: bash scripts/_launch.sh configs/recipes/tiny_m3d_clip.yaml 1 --train_manifest PATH
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/m3d_clip.yaml "$@"
