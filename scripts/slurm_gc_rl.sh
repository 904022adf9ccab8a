#!/bin/bash
# GC-RL on 2 nodes x 8 GPUs with SLURM. Lightning reads SLURM's variables (one task per GPU).
# Edit the config and the paths; the checkpoint folder must be on a filesystem every node sees.
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
CONFIG=${CONFIG:-configs/qwen2.5_gpu.yaml}
LAST=$(ls "$RUN_DIR"/lightning_logs/version_*/checkpoints/last.ckpt 2>/dev/null | sort -V | tail -n 1 || true)
srun sorl fit --config "$CONFIG" \
  --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" \
  --trainer.default_root_dir "$RUN_DIR" ${LAST:+--ckpt_path "$LAST"}
