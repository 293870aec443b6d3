#!/usr/bin/env bash
# Several nodes from one command: the DeepSpeed launcher reads a hostfile and starts every node
# over passwordless ssh (pdsh by default). Run it on the first node of the hostfile.
#
# usage: launchers/multi_node_hostfile.sh --hostfile H [--master_addr A] [--master_port P]
#            [--num_nodes N] [--num_gpus G] [--dry-run] [deepspeed flags] -- <stage> [stage options]
# runs:  deepspeed --hostfile H --master_addr A --master_port P [--num_nodes N] [--num_gpus G]
#            [deepspeed flags] --module dist_peakd.cli <stage> ...
#
#   --hostfile H     DeepSpeed hostfile, one "<host> slots=<gpus>" line per node (default: $HOSTFILE)
#   --master_addr A  address of rank 0's node, reachable from every node
#                    (default: $MASTER_ADDR, else the hostfile's first host)
#   --master_port P  rendezvous port (default: $MASTER_PORT, else 29500)
#   --num_nodes N    use only the hostfile's first N hosts;  --num_gpus G: G ranks per host
#   --dry-run        print the command and exit 0
# Other flags before `--` go to the deepspeed launcher (e.g. --launcher openmpi, --ssh_port 2222).
# Environment reaches the remote ranks only through ./.deepspeed_env or ~/.deepspeed_env
# ("NAME=value" lines) and the variables DeepSpeed forwards itself (NCCL_*, PYTHON*, ...).
# With pdsh (the default launcher) the stage options cross each node's shell: they are passed
# quoted for it (what `$(...)`, quotes, spaces, globs or % would do there cannot happen; every rank
# gets them byte for byte) and --force_multi is added, so even one node goes that same way. The
# printed command therefore shows the options in that quoted form; a "# stage options" line shows
# them as given. Run it from a folder whose path has no shell characters (DeepSpeed's remote
# command does `cd <this folder>` unquoted). Other launchers get the options as they are.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

hostfile=${HOSTFILE:-}
master_addr=${MASTER_ADDR:-}
master_port=${MASTER_PORT:-29500}
num_nodes=""
num_gpus=""
ds_args=()
while (($#)); do
  case $1 in
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    --hostfile) need_value "$1" $#; hostfile=$2; shift 2 ;;
    --master_addr=*) master_addr=${1#*=}; shift ;;
    --master_addr) need_value "$1" $#; master_addr=$2; shift 2 ;;
    --master_port=*) master_port=${1#*=}; shift ;;
    --master_port) need_value "$1" $#; master_port=$2; shift 2 ;;
    --num_nodes=*) num_nodes=${1#*=}; shift ;;
    --num_nodes) need_value "$1" $#; num_nodes=$2; shift 2 ;;
    --num_gpus=*) num_gpus=${1#*=}; shift ;;
    --num_gpus) need_value "$1" $#; num_gpus=$2; shift 2 ;;
    *) ds_args+=("$1"); shift ;;
  esac
done
need_stage "$@"
[[ -n $hostfile ]] || die "--hostfile is required"
[[ -f $hostfile ]] || die "hostfile $hostfile not found"
hosts=$(awk '{ sub(/#.*/, "") } NF { print $1 }' "$hostfile")
[[ -n $hosts ]] || die "hostfile $hostfile lists no host"
master_addr=${master_addr:-$(head -n1 <<<"$hosts")}
need_int --master_port "$master_port" 1
limits=()
[[ -z $num_nodes ]] || { need_int --num_nodes "$num_nodes" 1; limits+=(--num_nodes "$num_nodes"); }
[[ -z $num_gpus ]] || { need_int --num_gpus "$num_gpus" 1; limits+=(--num_gpus "$num_gpus"); }

[[ $master_addr =~ ^[A-Za-z0-9._:-]+$ ]] || die "--master_addr '$master_addr' is not a host name or address"

# Which way DeepSpeed starts the nodes: pdsh (a remote shell parses the command) unless told otherwise.
launcher=pdsh
for ((i = 0; i < ${#ds_args[@]}; i++)); do
  case ${ds_args[i]} in
    --launcher=*) launcher=${ds_args[i]#*=} ;;
    --launcher) launcher=${ds_args[i + 1]:-} ;;
    --no_ssh) launcher=none ;;
  esac
done
stage_args=("$@")
if [[ ${launcher,,} == pdsh ]]; then
  shell_safe_path "the current folder" "$PWD"
  limits+=(--force_multi)
  stage_args=()
  for a in "$@"; do stage_args+=("$(pdsh_word "$a")"); done
  note "stage options (each rank receives exactly these; quoted below for the remote shell): $(quote_cmd "$@")"
fi

note "hostfile $hostfile: $(wc -l <<<"$hosts") host(s): $(paste -sd' ' <<<"$hosts"); rank 0 on $master_addr:$master_port"
run_cmd "$(find_tool deepspeed)" --hostfile "$hostfile" --master_addr "$master_addr" --master_port "$master_port" \
  "${limits[@]}" "${ds_args[@]}" --module dist_peakd.cli "${stage_args[@]}"
