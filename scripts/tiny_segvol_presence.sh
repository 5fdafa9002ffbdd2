#!/usr/bin/env bash
# tiny SegVol presence fine-tuning (stage 2: absent prompts, presence loss)
# Usage: bash scripts/tiny_segvol_presence.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_segvol_presence.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_segvol_presence.yaml "$@"
