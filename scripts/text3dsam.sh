#!/usr/bin/env bash
# Text3DSAM on CVPR-BiomedSegFM (text-guided 3D segmentation)
# Usage: bash scripts/text3dsam.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/text3dsam.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/text3dsam.yaml "$@"
