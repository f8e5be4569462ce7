#!/usr/bin/env bash
# Transfer on one GPU in one pass (about 12 minutes on an H200): pretrain for PRETRAIN_MINUTES on a slice of
# English Wikipedia plus IMDb review text (labels unused), then fine-tune SST-2, MRPC, STS-B and CoLA from it
# and from random initialisation at equal steps, into one JSON (benchmarks/transfer_study.py).
#
# The GPU machine has no network, so the data travels with the working tree. On a machine with the public
# data (../shared/data, or PERCEIVER_LM_DATA), first:
#     bash scripts/gpu_transfer.sh prepare        # writes runs/gpu_data (about 45 MB): carry that folder
# then on the GPU, from the repository root:
#     OUT=folder bash scripts/gpu_transfer.sh
# Knobs (environment): PRESET (small), BATCH (64 windows of 2,048 bytes), LR (1e-3), PRETRAIN_MINUTES (8),
# PRETRAIN_STEPS (the cosine's length; 8000), FT_STEPS (600),
# TASKS (sst2,mrpc,stsb,cola), SEEDS (0), SYNTHETIC_MINUTES (2: the synthetic-transfer benchmark, world seeds
# 0 and 1, default recipe; 0 skips it).
set -u
DATA_OUT=runs/gpu_data
if [[ ${1:-} == prepare ]]; then
    SRC="${PERCEIVER_LM_DATA:-../shared/data}"
    mkdir -p "$DATA_OUT/glue"
    python3 - "$SRC" "$DATA_OUT" <<'EOF'
import json, sys
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
# The first 20 MB of the enwiki dump, cut after a whole article (wikiextractor's </doc> line).
wiki = (src / "corpus/enwiki/enwiki_wikiextractor_AA.txt").read_bytes()[:20_000_000]
(out / "enwiki_20mb.txt").write_bytes(wiki[: wiki.rindex(b"</doc>\n") + 7])
for split, keep in (("train", None), ("val", 1000)):
    with open(src / f"imdb/{split}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line)["text"].replace("<br />", " ").replace("\n", " ") for line in f]
    rows = rows[:: max(1, len(rows) // keep)] if keep else rows  # the val rows are sorted by label: spread out
    (out / f"imdb_{split}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
EOF
    for task in SST-2 MRPC STS-B CoLA; do cp -r "$SRC/glue/$task" "$DATA_OUT/glue/"; done
    du -sh "$DATA_OUT"
    exit 0
fi
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
OUT="${OUT:-runs/gpu_transfer}"
RUNS=/tmp/gpu_transfer
mkdir -p "$OUT" "$RUNS"
[[ -d $DATA_OUT/glue/SST-2 ]] || { echo "error: $DATA_OUT is missing: run 'bash scripts/gpu_transfer.sh prepare' and carry it" >&2; exit 2; }
nvidia-smi -L
echo "== pretrain ${PRESET:-small}, batch ${BATCH:-64} x 2048 bytes, ${PRETRAIN_MINUTES:-8} minutes"
timeout $(( ${PRETRAIN_MINUTES:-8} * 60 + 120 )) python3 -m cli pretrain --preset "${PRESET:-small}" \
    --data "$DATA_OUT/enwiki_20mb.txt" --data "$DATA_OUT/imdb_train.txt" --val-data "$DATA_OUT/imdb_val.txt" \
    --batch-size "${BATCH:-64}" --lr "${LR:-1e-3}" --warmup-steps 300 --max-steps "${PRETRAIN_STEPS:-8000}" \
    --max-minutes "${PRETRAIN_MINUTES:-8}" --eval-every 1000 --save-every 2000 --keep-checkpoints 1 \
    --output-dir "$RUNS/pretrain" --report-to none --overwrite 2>&1 | tee "$OUT/pretrain.log" | grep -v "^pretrain"
cp "$RUNS/pretrain/metrics.jsonl" "$OUT/pretrain_metrics.jsonl"
echo "== fine-tune from random init and from the pretrained model, equal steps"
timeout 360 python3 benchmarks/transfer_study.py --glue-dir "$DATA_OUT/glue" --tasks "${TASKS:-sst2,mrpc,stsb,cola}" \
    --labels all --seeds "${SEEDS:-0}" --arms "random,pretrained=$RUNS/pretrain" --preset "${PRESET:-small}" \
    --full-steps "${FT_STEPS:-600}" --evals 3 --runs "$RUNS/finetune" --out "$OUT/transfer_gpu.json" 2>&1 \
    | grep -v "^glue" | tee "$OUT/transfer_gpu.txt"
if (( ${SYNTHETIC_MINUTES:-2} > 0 )); then
    echo "== synthetic transfer (benchmarks/synthetic_transfer.py), ${SYNTHETIC_MINUTES:-2} minutes of pretraining"
    timeout $(( ${SYNTHETIC_MINUTES:-2} * 120 + 300 )) python3 benchmarks/synthetic_transfer.py --seeds 0,1 \
        --minutes "${SYNTHETIC_MINUTES:-2}" --pretrain-args "--preset small --window 256 --batch-size 32" \
        --runs "$RUNS/synthetic" --out "$OUT/synthetic_transfer_gpu.json" 2>&1 | tail -8 | tee "$OUT/synthetic_gpu.txt"
fi
