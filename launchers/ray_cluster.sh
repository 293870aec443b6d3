#!/usr/bin/env bash
# A Ray cluster for `dist-peakd sweep`: start the head, join workers, submit the sweep driver.
#
# usage: launchers/ray_cluster.sh head   [--port P] [--node_ip_address A] [--num_cpus N] [--num_gpus G]
#                                        [--dry-run] [ray start flags]
#        launchers/ray_cluster.sh worker --address HEAD:P [--node_ip_address A] [--num_cpus N]
#                                        [--num_gpus G] [--dry-run] [ray start flags]
#        launchers/ray_cluster.sh submit --address HEAD:P [--dry-run] -- [sweep] [sweep options]
#        launchers/ray_cluster.sh stop   [--dry-run]
# runs:  head:   ray start --head --port P --disable-usage-stats [...]
#        worker: ray start --address HEAD:P --disable-usage-stats [...]
#        submit: dist-peakd sweep --address HEAD:P [sweep options]   (the driver; run it on the head)
#        stop:   ray stop                                           (on every node)
#
#   --port P         head's GCS port (default: $RAY_PORT, else 6379)
#   --address HEAD:P the head's address (default: $RAY_ADDRESS)
#   --dry-run        print the command and exit 0
# Trials write under the sweep's --output_dir: put it (and --glue_dir, --cache_dir, the teacher
# cache) on storage every node mounts at the same path. On machines without a usable external
# address or auth setup: export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

(($#)) || { usage; exit 2; }
action=$1
shift
case $action in
  head | worker | submit | stop) ;;
  -h | --help) usage; exit 0 ;;
  *) die "unknown subcommand '$action' (head, worker, submit, stop)" ;;
esac

port=${RAY_PORT:-6379}
address=${RAY_ADDRESS:-}
start_args=()
while (($#)); do
  case $1 in
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) DRY_RUN=1; shift ;;
    --port=*) port=${1#*=}; shift ;;
    --port) need_value "$1" $#; port=$2; shift 2 ;;
    --address=*) address=${1#*=}; shift ;;
    --address) need_value "$1" $#; address=$2; shift 2 ;;
    --node_ip_address=* | --num_cpus=* | --num_gpus=*)  # our underscore names -> ray's dashes
      flag=${1%%=*}; start_args+=("${flag//_/-}" "${1#*=}"); shift ;;
    --node_ip_address | --num_cpus | --num_gpus)
      need_value "$1" $#; start_args+=("${1//_/-}" "$2"); shift 2 ;;
    *) [[ $action == head || $action == worker ]] || die "unknown flag '$1' for $action"
      start_args+=("$1"); shift ;;
  esac
done
if [[ $action != submit ]] && (($#)); then die "$action takes no arguments after '--'"; fi

ray=$(find_tool ray)
case $action in
  head)
    need_int --port "$port" 1
    host=$(hostname -I 2>/dev/null | awk '{ print $1 }' || true)
    for ((i = 0; i < ${#start_args[@]}; i++)); do
      [[ ${start_args[i]} != --node-ip-address ]] || host=${start_args[i + 1]}
    done
    note "workers join with: launchers/ray_cluster.sh worker --address ${host:-$(hostname)}:$port"
    note "then submit with:  launchers/ray_cluster.sh submit --address ${host:-$(hostname)}:$port -- [sweep options]"
    run_cmd "$ray" start --head --port "$port" --disable-usage-stats "${start_args[@]}"
    ;;
  worker)
    [[ -n $address ]] || die "--address HEAD:PORT is required (printed by the head)"
    run_cmd "$ray" start --address "$address" --disable-usage-stats "${start_args[@]}"
    ;;
  submit)
    [[ -n $address ]] || die "--address HEAD:PORT is required"
    [[ ${1:-} != sweep ]] || shift  # `-- sweep --opt ...` and `-- --opt ...` both work
    run_cmd "$(find_tool dist-peakd)" sweep --address "$address" "$@"
    ;;
  stop)
    run_cmd "$ray" stop
    ;;
esac
