#!/usr/bin/env bash
# tiny Text3DSAM on synthetic phantoms
# Usage: bash scripts/tiny_text3dsam.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_text3dsam.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_text3dsam.yaml "$@"
