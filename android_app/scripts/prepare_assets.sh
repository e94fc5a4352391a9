#!/usr/bin/env bash
# Puts what the demo app runs into its assets: an `mvos export` of the shipped default weights at the default
# size (480x864) and queue length (T=2), in every precision (the app picks fp16 on the GPU, fp32 on the CPU;
# int8 on request).
# Extra arguments go to mvos export, e.g. --overwrite to replace an earlier export, --weights CKPT for your own.
#   android_app/scripts/prepare_assets.sh
set -euo pipefail
assets="$(cd "$(dirname "$0")/.." && pwd)/app/src/main/assets/model"
mvos export --out "$assets" --precision fp32,fp16,int8 "$@"
