#!/usr/bin/env bash
# Several nodes without ssh: run this once on EVERY node (by hand, SLURM's srun, a k8s job, ...),
# each with its own --node_rank; the nodes meet at MASTER_ADDR:MASTER_PORT (rank 0's node).
#
# usage: launchers/multi_node_no_ssh.sh --node_rank R --num_nodes N --master_addr A
#            [--num_gpus G] [--master_port P] [--hostfile H] [--dry-run] [deepspeed flags]
#            -- <stage> [stage options]
# runs:  deepspeed --hostfile H --no_ssh --node_rank R --num_nodes N --num_gpus G
#            --master_addr A --master_port P [deepspeed flags] --module dist_peakd.cli <stage> ...
#
#   --node_rank R    this node's rank, 0..N-1 (default: $NODE_RANK); node 0 hosts global rank 0
#   --num_nodes N    number of nodes (default: $NUM_NODES, else every host of --hostfile)
#   --master_addr A  address of node 0, reachable from every node (default: $MASTER_ADDR)
#   --num_gpus G     ranks per node (default: $NUM_GPUS, else the GPU count, else 1 on CPU)
#   --master_port P  rendezvous port (default: $MASTER_PORT, else 29500)
#   --hostfile H     optional. DeepSpeed 0.19.8 only knows the world's shape from a hostfile
#                    ("<host> slots=<G>" per node; with --no_ssh the host names are labels and
#                    --node_rank picks the line). Without one, N lines "node<i> slots=G" are written
#                    to $DIST_PEAKD_HOSTFILE_DIR (default ${TMPDIR:-/tmp}/dist-peakd-<uid>).
#   --dry-run        print the command and exit 0
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

node_rank=${NODE_RANK:-}
num_nodes=${NUM_NODES:-}
master_addr=${MASTER_ADDR:-}
master_port=${MASTER_PORT:-29500}
num_gpus=${NUM_GPUS:-}
hostfile=""
ds_args=()
while (($#)); do
  case $1 in
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --node_rank=*) node_rank=${1#*=}; shift ;;
    --node_rank) need_value "$1" $#; node_rank=$2; shift 2 ;;
    --num_nodes=*) num_nodes=${1#*=}; shift ;;
    --num_nodes) need_value "$1" $#; num_nodes=$2; shift 2 ;;
    --master_addr=*) master_addr=${1#*=}; shift ;;
    --master_addr) need_value "$1" $#; master_addr=$2; shift 2 ;;
    --master_port=*) master_port=${1#*=}; shift ;;
    --master_port) need_value "$1" $#; master_port=$2; shift 2 ;;
    --num_gpus=*) num_gpus=${1#*=}; shift ;;
    --num_gpus) need_value "$1" $#; num_gpus=$2; shift 2 ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    --hostfile) need_value "$1" $#; hostfile=$2; shift 2 ;;
    *) ds_args+=("$1"); shift ;;
  esac
done
need_stage "$@"
[[ -n $master_addr ]] || die "--master_addr is required (the address of node 0)"
[[ -n $node_rank ]] || die "--node_rank is required"
need_int --node_rank "$node_rank"
need_int --master_port "$master_port" 1
num_gpus=${num_gpus:-$(gpu_count)}
need_int --num_gpus "$num_gpus" 1
if [[ -n $hostfile ]]; then
  [[ -f $hostfile ]] || die "hostfile $hostfile not found"
  num_nodes=${num_nodes:-$(awk '{ sub(/#.*/, "") } NF { n++ } END { print n + 0 }' "$hostfile")}
fi
[[ -n $num_nodes ]] || die "--num_nodes is required (or give --hostfile)"
need_int --num_nodes "$num_nodes" 1
((node_rank < num_nodes)) || die "--node_rank $node_rank is not below --num_nodes $num_nodes"

if [[ -z $hostfile ]]; then
  dir=${DIST_PEAKD_HOSTFILE_DIR:-${TMPDIR:-/tmp}/dist-peakd-$(id -u)}
  hostfile=$dir/hostfile-n$num_nodes-g$num_gpus
  lines=$(for ((i = 0; i < num_nodes; i++)); do echo "node$i slots=$num_gpus"; done)
  note "generated hostfile $hostfile: $(paste -sd',' <<<"$lines")"
  if ((!DRY_RUN)); then  # same content for the same shape: written atomically, shared safely
    mkdir -p "$dir"
    tmp=$(mktemp "$hostfile.XXXXXX")
    echo "$lines" >"$tmp"
    mv -f "$tmp" "$hostfile"
  fi
fi
note "node $node_rank of $num_nodes, $num_gpus rank(s) per node: global ranks" \
  "$((node_rank * num_gpus))..$((node_rank * num_gpus + num_gpus - 1)) of $((num_nodes * num_gpus));" \
  "rendezvous $master_addr:$master_port"
run_cmd "$(find_tool deepspeed)" --hostfile "$hostfile" --no_ssh --node_rank "$node_rank" \
  --num_nodes "$num_nodes" --num_gpus "$num_gpus" --master_addr "$master_addr" --master_port "$master_port" \
  "${ds_args[@]}" --module dist_peakd.cli "$@"
