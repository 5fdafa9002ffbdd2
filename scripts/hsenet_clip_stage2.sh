#!/usr/bin/env bash
# HSENet stage 2: 2E3 CLIP with semantic consistency to the stage-1 teacher (run stage 1 first)
# Usage: bash scripts/hsenet_clip_stage2.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/hsenet_clip_stage2.yaml)
# Tiny CPU twin: bash scripts/_launch.sh configs/recipes/tiny_hsenet_clip_stage2.yaml 1 --train_manifest PATH
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/hsenet_clip_stage2.yaml "$@"
