#!/usr/bin/env bash
# One node, N ranks (one per GPU; gloo processes on CPU) through the DeepSpeed launcher.
#
# usage: launchers/single_node.sh [--num_gpus N] [--master_port P] [--dry-run] [deepspeed flags]
#                                 -- <stage> [stage options]
# runs:  deepspeed --num_gpus N --master_port P [deepspeed flags] --module dist_peakd.cli <stage> ...
#
#   --num_gpus N     ranks on this node (default: $NUM_GPUS, else the GPU count, else 1 on CPU)
#   --master_port P  rendezvous port (default: $MASTER_PORT, else 29500)
#   --dry-run        print the command and exit 0
# Other flags before `--` go to the deepspeed launcher as they are (e.g. --bind_cores_to_rank).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

num_gpus=${NUM_GPUS:-}
master_port=${MASTER_PORT:-29500}
ds_args=()
while (($#)); do
  case $1 in
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --num_gpus=*) num_gpus=${1#*=}; shift ;;
    --num_gpus) need_value "$1" $#; num_gpus=$2; shift 2 ;;
    --master_port=*) master_port=${1#*=}; shift ;;
    --master_port) need_value "$1" $#; master_port=$2; shift 2 ;;
    *) ds_args+=("$1"); shift ;;
  esac
done
need_stage "$@"
num_gpus=${num_gpus:-$(gpu_count)}
need_int --num_gpus "$num_gpus" 1
need_int --master_port "$master_port" 1

run_cmd "$(find_tool deepspeed)" --num_gpus "$num_gpus" --master_port "$master_port" "${ds_args[@]}" \
  --module dist_peakd.cli "$@"
