#!/usr/bin/env bash
# SNIPS as function calls: the data for examples/snips-tools, made from ../shared (never copied
# into the repository). One tool per intent, written once to data/tools.json (task.tools); one
# call per query in data/snips-tools.jsonl.
#   examples/snips-tools/prepare.sh            # 100 per intent: ~70 train per intent after the split
#   examples/snips-tools/prepare.sh 400        # the larger size
# --errors cesu8: train_PlayMusic_full.json holds one emoji written as CESU-8 (see
# examples/snips-slots/README.md); this recovers the character instead of stopping.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="${SNIPS_DIR:-$here/../../../shared/datasets/snips}"
per_intent="${1:-100}"
mkdir -p "$here/data"
tunewise data convert "$src" "$here/data/snips-tools.jsonl" --from snips \
  --per-intent "$per_intent" --seed 0 --errors cesu8 --tools-out "$here/data/tools.json"
