# Helpers shared by the launch scripts (sourced, never run).
#
# Convention of every launch script:
#     launchers/<script> [launcher flags] -- <stage> [stage options]
# Everything after the first bare `--` is handed to `dist-peakd` untouched. Every script prints the
# exact command it runs as one shell-quoted line starting with "+ " (stderr when it runs it, stdout
# with --dry-run, which prints and exits 0 without running anything).

LAUNCHERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$LAUNCHERS_DIR")
DRY_RUN=0

die() {
  echo "$(basename "$0"): error: $*" >&2
  echo "run '$(basename "$0") --help' for usage" >&2
  exit 2
}

# need_value FLAG ARGC: a flag given as `--flag VALUE` must have its VALUE.
need_value() { (($2 >= 2)) || die "$1 needs a value"; }

# need_int NAME VALUE [MIN]: VALUE is an integer >= MIN (default 0).
need_int() {
  [[ $2 =~ ^[0-9]+$ ]] && (($2 >= ${3:-0})) || die "$1 must be an integer >= ${3:-0}, got '$2'"
}

# find_tool NAME: NAME on PATH, else the repo virtualenv's copy, else NAME as is.
find_tool() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [[ -x "$REPO_ROOT/.venv/bin/$1" ]]; then
    echo "$REPO_ROOT/.venv/bin/$1"
  else
    echo "$1"
  fi
}

# gpu_count: GPUs visible on this machine (nvidia-smi), or 1 (one CPU rank) when there are none.
gpu_count() {
  local n=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  ((n > 0)) && echo "$n" || echo 1
}

# quote_cmd ARGS...: the command as one copy-pasteable line (shell-quoted like Python's shlex.quote).
quote_cmd() {
  local out=() a
  for a in "$@"; do
    if [[ -n $a && $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# pdsh_word ARG: ARG written so that it reaches each node's program byte for byte through the
# DeepSpeed pdsh runner (0.19.8 `PDSHRunner.parse_user_args` wraps a word holding a space in "..."
# and escapes only `"` in it), pdsh (replaces %h %u %n %% in every word) and the remote login shell
# (POSIX sh, bash, dash, zsh parse the line ssh hands over). Plain words stay as they are; other
# words without a space are single-quoted; in words with a space the characters still special
# inside "..." ($ ` \) are escaped and DeepSpeed adds the quotes; then every % is doubled.
# tests/deploy/test_launcher_quoting.py runs the real runner with a stand-in pdsh and real shells.
pdsh_word() {
  local a=$1 q
  if [[ $a =~ ^[A-Za-z0-9_@+=:,./-]+$ ]]; then
    q=$a  # nothing any shell or pdsh would touch: left readable
  elif [[ $a == *" "* ]]; then
    q=${a//\\/\\\\}
    q=${q//\$/\\\$}
    q=${q//\`/\\\`}
  else
    q="'${a//\'/\'\\\'\'}'"
  fi
  printf '%s' "${q//%/%%}"
}

# shell_safe_path NAME PATH: refuse a PATH that a remote shell would split or expand (the pdsh
# runner puts `cd <cwd>` and the python path into the remote command unquoted).
shell_safe_path() {
  [[ $2 =~ ^[A-Za-z0-9_@+=:,./-]+$ ]] ||
    die "$1 '$2' holds characters the remote shell would interpret (pdsh runs it unquoted there); use a path made of letters, digits and _@+=:,./-"
}

# note TEXT: an explanatory line ("# TEXT") next to the printed command.
note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "# $*" >&2; fi
}

# run_cmd ARGS...: print the command; run it (exec) unless --dry-run was given.
run_cmd() {
  if ((DRY_RUN)); then
    echo "+ $(quote_cmd "$@")"
    exit 0
  fi
  echo "+ $(quote_cmd "$@")" >&2
  exec "$@"
}

# need_stage ARGS...: the part after `--` must name a stage.
need_stage() {
  (($# >= 1)) || die "missing '-- <stage> [stage options]' (stages: dist-peakd --help)"
  [[ $1 != -* ]] || die "the first word after '--' must be a stage name, got '$1'"
}

# usage: the script's leading comment block (without the shebang and #SBATCH lines).
usage() {
  awk 'NR == 1 && /^#!/ { next } /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}
