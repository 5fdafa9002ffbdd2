#!/usr/bin/env bash
# tiny SegVol (text / box / point prompts) on synthetic phantoms
# Usage: bash scripts/tiny_segvol.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_segvol.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_segvol.yaml "$@"
