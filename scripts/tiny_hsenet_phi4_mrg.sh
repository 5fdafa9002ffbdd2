#!/usr/bin/env bash
# tiny twin of hsenet_phi4_mrg.yaml
# Usage: bash scripts/tiny_hsenet_phi4_mrg.sh [NUM_GPUS] [--key value ...]   (recipe: configs/recipes/tiny_hsenet_phi4_mrg.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_hsenet_phi4_mrg.yaml "$@"
