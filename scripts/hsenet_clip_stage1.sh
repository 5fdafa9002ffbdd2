#!/usr/bin/env bash
# HSENet stage 1: ViT3D-B + BERT CLIP on CT-RATE
# Usage: bash scripts/hsenet_clip_stage1.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/hsenet_clip_stage1.yaml)
# Tiny CPU twin: bash scripts/_launch.sh configs/recipes/tiny_hsenet_clip_stage1.yaml 1 --train_manifest PATH
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/hsenet_clip_stage1.yaml "$@"
