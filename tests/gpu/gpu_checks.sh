#!/usr/bin/env bash
# GPU checks for a session that is lent a GPU machine (the `device` tool): one short script.
# Run from the repo root there; its python3 already has a CUDA PyTorch (and prometheus-client).
#   bash tests/gpu/gpu_checks.sh            # logs land in $OUT (or /tmp/netorch-gpu)
# 1. the bench's NCCL path on the GPU, world size 1 (CUDA events), every op, with the check,
#    blocking and non-blocking (--blocking 0);
# 2. the DDP training job on NCCL, world size 1: samples/s and step time;
# 3. the in-node launcher (train.launch) forking NCCL ranks.
# Not covered: gloo with CUDA tensors (train.bench runs gloo on CPU tensors only).
set -uo pipefail
out=${OUT:-/tmp/netorch-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NETORCH_IFNAME=lo
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$out/gpu.txt"

run() {  # run NAME CMD...: a torchrun on 127.0.0.1 with a 240 s limit
    local name=$1; shift
    timeout 240 python3 -m torch.distributed.run --nnodes 1 --nproc-per-node 1 \
        --master-addr 127.0.0.1 --master-port "$((29500 + RANDOM % 1000))" "$@" \
        2>&1 | tee "$out/$name.log"
    echo "$name exit ${PIPESTATUS[0]}" | tee -a "$out/gpu.txt"
}

run bench_nccl -m train.bench --dist-backend nccl --ops all \
    --min-bytes 1M --max-bytes 1G --step-factor 4 --warmup 5 --iters 20 \
    --dtype float32,bfloat16 --check 1
# 1b. the non-blocking bench (-z 0: async ops on their own buffers, CUDA events around them).
run bench_nccl_z0 -m train.bench --dist-backend nccl --ops all \
    --min-bytes 1M --max-bytes 256M --step-factor 4 --warmup 5 --iters 20 --check 1 --blocking 0
run train_nccl -m train.job --dist-backend nccl --steps 400 --batch-size 4096 --width 1024 \
    --depth 4 --checkpoint-every 0 --progress-every 100
grep -h "samples_per_s\|step_time" "$out"/train_nccl.log | tail -3

# 3. the in-node launcher forks GPU ranks (no CUDA before the fork) and NCCL runs: one GPU here,
#    so 1 rank with every op, then 2 ranks sharing the GPU (NCCL refuses two ranks per device on
#    some versions: the log says which), and a warm-style second job on fresh ranks.
launch() {  # launch NAME NPROC CMD...: train.launch on 127.0.0.1 with a 240 s limit
    local name=$1 nproc=$2; shift 2
    timeout 240 python3 -P -m train.launch --nnodes 1 --nproc-per-node "$nproc" \
        --master-addr 127.0.0.1 --master-port "$((30500 + RANDOM % 1000))" "$@" \
        2>&1 | tee "$out/$name.log"
    echo "$name exit ${PIPESTATUS[0]}" | tee -a "$out/gpu.txt"
}
launch launch_nccl_1 1 -m train.bench --dist-backend nccl --ops all --min-bytes 1M \
    --max-bytes 256M --step-factor 4 --dtype float32 --check 1
launch launch_nccl_2 2 -m train.bench --dist-backend nccl --ops all_reduce,sendrecv \
    --min-bytes 1M --max-bytes 64M --step-factor 4 --check 1
grep -h "Out of bounds" "$out"/launch_nccl_*.log
