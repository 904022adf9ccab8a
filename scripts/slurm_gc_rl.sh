#!/bin/bash
# GC-RL on 2 nodes x 8 GPUs with SLURM: FSDP2 over all 16 GPUs, vLLM rollouts (one engine per GPU,
# asleep while training runs). Lightning reads SLURM's variables (one task per GPU). The configs'
# callbacks (callbacks/default.yaml) include PreemptionCheckpoint: SLURM's SIGTERM before the time
# limit saves last.ckpt, and the requeued job resumes from it.
#   sbatch scripts/slurm_gc_rl.sh                                                      # Qwen2.5-1.5B
#   CONFIGS="configs/qwen2.5_gpu.yaml configs/model/qwen2.5_7b.yaml" sbatch scripts/slurm_gc_rl.sh  # 7B
# Edit the model folders in the configs; RUN_DIR must be on a filesystem every node sees.
#SBATCH --job-name=sorl-gc-rl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120  # time to save last.ckpt before the limit (PreemptionCheckpoint)
#SBATCH --requeue
set -euo pipefail
RUN_DIR=${RUN_DIR:-$PWD/runs/gc_rl_multinode}   # shared filesystem
CONFIGS=${CONFIGS:-configs/qwen2.5_gpu.yaml}
CONFIG_ARGS=()
for config in $CONFIGS; do CONFIG_ARGS+=(--config "$config"); done
# FSDP2 shards over every GPU of every node: the configs' data_parallel_size (8) is one node's.
WORLD_SIZE=$((SLURM_NNODES * SLURM_NTASKS_PER_NODE))
LAST=$(ls "$RUN_DIR"/lightning_logs/version_*/checkpoints/last.ckpt 2>/dev/null | sort -V | tail -n 1 || true)
srun sorl fit "${CONFIG_ARGS[@]}" \
  --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" \
  --trainer.strategy.init_args.data_parallel_size "$WORLD_SIZE" \
  --trainer.default_root_dir "$RUN_DIR" ${LAST:+--ckpt_path "$LAST"}
