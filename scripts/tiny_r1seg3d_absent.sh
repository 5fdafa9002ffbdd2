#!/usr/bin/env bash
# tiny R1Seg-3D absent-organ stage (stage 2: decoder probes, presence loss, presence gate)
# Usage: bash scripts/tiny_r1seg3d_absent.sh [NUM_GPUS] --pretrained_model RUN [--key value ...]   (recipe: configs/recipes/tiny_r1seg3d_absent.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
lamed_launch configs/recipes/tiny_r1seg3d_absent.yaml "$@"
