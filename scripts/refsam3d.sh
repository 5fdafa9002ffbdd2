#!/usr/bin/env bash
# RefSAM3D referring 3D segmentation (CT/MR)
# Usage: bash scripts/refsam3d.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/refsam3d.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/refsam3d.yaml "$@"
