#!/usr/bin/env bash
# GPU checks and figures, in one pass (about 7 minutes on one H200): the GPU tests, the no-host-sync
# tests on CUDA, FSDP through Accelerate (train, checkpoint, resume), `base` throughput and MFU with the
# model's attention and with q/k padded for flash attention, and the head-to-head on the GPU.
# Usage: OUT=folder bash scripts/gpu_check.sh   (run from the repository root, torch with CUDA installed)
# GPU_CHECK_ONLY=speed runs only the speed recipe (issue 23, about 9 minutes on one H200): `base` per batch size,
# eager vs torch.compile (and max-autotune at one batch size), then the head-to-head with compile at 16,384 bytes.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"

only="${GPU_CHECK_ONLY:-all}"
if [[ $only == speed ]]; then
for batch in 32 96; do
    echo "== base, batch $batch: eager vs compiled (bf16)"
    timeout 420 python3 benchmarks/pretrain_throughput.py --presets base --device cuda --batch-size "$batch" \
        --precisions bf16 --compile off,on --repeats 1 --steps 10 --warmup 3 --peak-tflops 989 \
        --out "$OUT/pretrain_base_b${batch}.json" 2>&1 | tee "$OUT/pretrain_base_b${batch}.txt"
done
echo "== base, batch 96: max-autotune"
timeout 420 python3 benchmarks/pretrain_throughput.py --presets base --device cuda --batch-size 96 \
    --precisions bf16 --compile max-autotune --repeats 1 --steps 10 --warmup 3 --peak-tflops 989 \
    --out "$OUT/pretrain_base_b96_autotune.json" 2>&1 | tee "$OUT/pretrain_base_b96_autotune.txt"
echo "== head to head on the GPU, compiled"
timeout 300 python3 benchmarks/head_to_head.py --device cuda --lengths 16384 --repeats 1 --batch-size 8 \
    --steps 3 --configs ours@bf16,ours@bf16+compile,transformers@bf16 --out "$OUT/head_to_head_gpu_compile.json" \
    2>&1 | tail -n 25 | tee "$OUT/head_to_head_gpu_compile.txt"
exit 0
fi
if [[ $only == all ]]; then
echo "== tests on the GPU"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_trainer.py::test_pretraining_steps_between_logs_do_no_host_sync 2>&1 | tee "$OUT/pytest.log"

fi
echo "== FSDP2 through accelerate launch (one process): train, checkpoint, resume"
fsdp=(accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no --mixed_precision bf16 --use_fsdp
      --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap Block
      --fsdp_state_dict_type FULL_STATE_DICT --fsdp_reshard_after_forward true --fsdp_cpu_ram_efficient_loading false)
rm -rf /tmp/fsdp_run
timeout 150 "${fsdp[@]}" -m cli pretrain --preset tiny --max-steps 4 --save-every 2 --eval-every 2 \
    --output-dir /tmp/fsdp_run --report-to none > "$OUT/fsdp.log" 2>&1; echo "rc $?"; tail -n 4 "$OUT/fsdp.log"
timeout 150 "${fsdp[@]}" -m cli pretrain --preset tiny --max-steps 6 --save-every 2 --eval-every 2 \
    --output-dir /tmp/fsdp_run --report-to none --resume >> "$OUT/fsdp.log" 2>&1; echo "rc $?"; tail -n 4 "$OUT/fsdp.log"
python3 -m cli info /tmp/fsdp_run 2>&1 | tee -a "$OUT/fsdp.log"

[[ $only == all ]] || exit 0
echo "== base throughput and MFU (bf16; the model's attention vs q/k padded for flash)"
timeout 300 python3 benchmarks/pretrain_throughput.py --presets base --device cuda --batch-size 32 \
    --precisions bf16 --attention default,padded --repeats 2 --steps 10 --warmup 3 --peak-tflops 989 \
    --out "$OUT/pretrain_base_gpu.json" 2>&1 | tee "$OUT/pretrain_base_gpu.txt"

echo "== head to head on the GPU"
timeout 240 python3 benchmarks/head_to_head.py --device cuda --lengths 16384 --repeats 1 --batch-size 8 \
    --steps 3 --configs ours@bf16,transformers@bf16 --out "$OUT/head_to_head_gpu.json" 2>&1 | tail -n 25 \
    | tee "$OUT/head_to_head_gpu.txt"
