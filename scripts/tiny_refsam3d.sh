#!/usr/bin/env bash
# tiny RefSAM3D on synthetic phantoms (referring expressions)
# Usage: bash scripts/tiny_refsam3d.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_refsam3d.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_refsam3d.yaml "$@"
