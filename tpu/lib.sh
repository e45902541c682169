#!/usr/bin/env bash
# shellcheck shell=bash disable=SC2034
# (SC2034: the configuration variables below are read by the scripts that source this file.)
# Common library of the tpu/*.sh scripts: configuration (flags override env vars), flag parsing with clear errors,
# --dry-run (print each command on one line, run nothing) and the gcloud command builders. Sourced, never run.
#
# Environment (every value also has a flag):
#   T1_TPU_PROJECT  --project      Google Cloud project
#   T1_TPU_ZONE     --zone         zone of the slice (e.g. us-east5-a for v5p, us-central2-b for v4)
#   T1_TPU_NAME     --name         queued-resource id, also used as the TPU node id
#   T1_TPU_TYPE     --type         accelerator type: v4-8, v4-32, v5litepod-16 (or v5e-16), v5p-8, v5p-64, v6e-8 ...
#   T1_TPU_SPOT     --spot         1 = Spot capacity (preemptible), 0 = on-demand (default 0)
#   T1_TPU_RUNTIME  --runtime      TPU VM software version (default chosen from the generation)
#   T1_REPO_URL     --repo-url     git URL of this project, cloned on every worker
#   T1_REPO_BRANCH  --branch       branch or tag to install (default main)
#   T1_REMOTE_DIR   --remote-dir   checkout directory on the workers, relative to the remote home (default t1-jax)
#   T1_RUN_NAME     --run          name of a run: its logs are t1-logs/<run>.log on every worker (default train)
#   T1_LOG_DIR      --log-dir      local folder for per-worker logs (default tpu-logs)
#   T1_GCLOUD                      the gcloud binary (default gcloud; tests point it at a fake)

T1_SCRIPT=$(basename "${0}")
T1_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T1_GCLOUD=${T1_GCLOUD:-gcloud}
PROJECT=${T1_TPU_PROJECT:-}
ZONE=${T1_TPU_ZONE:-}
NAME=${T1_TPU_NAME:-}
ACCEL=${T1_TPU_TYPE:-}
SPOT=${T1_TPU_SPOT:-0}
RUNTIME=${T1_TPU_RUNTIME:-}
REPO_URL=${T1_REPO_URL:-}
BRANCH=${T1_REPO_BRANCH:-main}
REMOTE_DIR=${T1_REMOTE_DIR:-t1-jax}
RUN=${T1_RUN_NAME:-train}
LOG_DIR=${T1_LOG_DIR:-tpu-logs}
DRY_RUN=0
T1_SHIFT=1
REMOTE_LOGS=t1-logs

t1_die() {
  echo "${T1_SCRIPT}: error: $*" >&2
  exit 2
}

t1_log() {
  echo "[${T1_SCRIPT} $(date -u +%H:%M:%S)] $*" >&2
}

# Quote one argument for display so that the printed line can be pasted into a shell.
t1_quote() {
  local arg=$1
  if [[ ${arg} =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "${arg}"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

t1_cmdline() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(t1_quote "${arg}")"
  done
  printf '%s\n' "${out}"
}

# Run a command, or under --dry-run print it (one line) and run nothing.
t1_run() {
  if ((DRY_RUN)); then
    t1_cmdline "$@"
  else
    t1_log "+ $(t1_cmdline "$@")"
    "$@"
  fi
}

# Parse one flag shared by the scripts. $1 = the space-separated flags this script accepts; the remaining arguments
# are the command line from the current position. Sets T1_SHIFT to the number of arguments consumed.
t1_common_flag() {
  local allowed=" ${1//$'\n'/ } " flag=$2 value="" has_value=0
  shift 2
  case ${flag} in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; T1_SHIFT=1; return ;;
    --spot) [[ ${allowed} == *" spot "* ]] || t1_die "unknown flag ${flag} (see --help)"; SPOT=1; T1_SHIFT=1; return ;;
    --*=*) value=${flag#*=}; flag=${flag%%=*}; has_value=1; T1_SHIFT=1 ;;
    --*) if [[ $# -gt 0 ]]; then value=$1; has_value=1; fi; T1_SHIFT=2 ;;
    *) t1_die "unexpected argument '${flag}' (see --help)" ;;
  esac
  local key=${flag#--}
  [[ ${allowed} == *" ${key} "* ]] || t1_die "unknown flag ${flag} (see --help)"
  ((has_value)) || t1_die "${flag} needs a value"
  [[ -n ${value} ]] || t1_die "${flag} needs a non-empty value"
  case ${key} in
    project) PROJECT=${value} ;;
    zone) ZONE=${value} ;;
    name) NAME=${value} ;;
    type) ACCEL=${value} ;;
    runtime) RUNTIME=${value} ;;
    repo-url) REPO_URL=${value} ;;
    branch) BRANCH=${value} ;;
    remote-dir) REMOTE_DIR=${value} ;;
    run) RUN=${value} ;;
    log-dir) LOG_DIR=${value} ;;
    *) T1_FLAG_KEY=${key}; T1_FLAG_VALUE=${value}; return 1 ;;  # a script-specific valued flag
  esac
}

# The scripts that only name a slice (delete.sh, status.sh): their flags' help block and their parser.
t1_slice_flags_help() {
  cat <<'HELP'

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          queued-resource id [T1_TPU_NAME]
  --dry-run         print the gcloud command and run nothing
  -h, --help        this help
HELP
}

t1_parse_slice_flags() {
  while [[ $# -gt 0 ]]; do
    t1_common_flag "project zone name" "$@" || t1_die "unknown flag --${T1_FLAG_KEY} (see --help)"
    shift "${T1_SHIFT}"
  done
  t1_check_slice
}

t1_require_int() {  # name value
  [[ $2 =~ ^[0-9]+$ ]] || t1_die "--$1 must be a non-negative integer, got '$2'"
}

# Validate the slice location and name; every script needs them.
t1_check_slice() {
  [[ -n ${PROJECT} ]] || t1_die "no project: pass --project or set T1_TPU_PROJECT"
  [[ -n ${ZONE} ]] || t1_die "no zone: pass --zone or set T1_TPU_ZONE"
  [[ -n ${NAME} ]] || t1_die "no slice name: pass --name or set T1_TPU_NAME"
  [[ ${NAME} =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    t1_die "--name '${NAME}' must be lower-case letters, digits and '-', starting with a letter"
  [[ ${SPOT} == 0 || ${SPOT} == 1 ]] || t1_die "T1_TPU_SPOT must be 0 or 1, got '${SPOT}'"
  [[ ${REMOTE_DIR} =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] ||
    t1_die "--remote-dir '${REMOTE_DIR}' must be a plain path relative to the remote home"
  [[ ${RUN} =~ ^[A-Za-z0-9_.-]+$ ]] || t1_die "--run '${RUN}' may only use letters, digits, '.', '_' and '-'"
}

# Normalise the accelerator type and pick the runtime version of its generation.
t1_check_type() {
  [[ -n ${ACCEL} ]] || t1_die "no accelerator type: pass --type (e.g. v5p-8) or set T1_TPU_TYPE"
  ACCEL=${ACCEL/#v5e-/v5litepod-}
  local default_runtime
  case ${ACCEL} in
    v4-[0-9]*) default_runtime=tpu-ubuntu2204-base ;;
    v5p-[0-9]*) default_runtime=v2-alpha-tpuv5 ;;
    v5litepod-[0-9]*) default_runtime=v2-alpha-tpuv5-lite ;;
    v6e-[0-9]*) default_runtime=v2-alpha-tpuv6e ;;
    *) t1_die "unsupported accelerator type '${ACCEL}': use v4-N, v5p-N, v5litepod-N (v5e-N) or v6e-N" ;;
  esac
  [[ ${ACCEL} =~ ^[a-z0-9]+-[0-9]+$ ]] || t1_die "malformed accelerator type '${ACCEL}' (e.g. v5p-8)"
  RUNTIME=${RUNTIME:-${default_runtime}}
}

# ---- gcloud command builders (arrays in T1_CMD) ----------------------------------------------------------------------

t1_scope() {
  T1_SCOPE=(--project="${PROJECT}" --zone="${ZONE}")
}

t1_qr_create_cmd() {
  t1_scope
  T1_CMD=("${T1_GCLOUD}" compute tpus queued-resources create "${NAME}" --node-id="${NAME}" "${T1_SCOPE[@]}"
    --accelerator-type="${ACCEL}" --runtime-version="${RUNTIME}")
  if ((SPOT)); then T1_CMD+=(--spot); fi
}

t1_qr_describe_cmd() {
  t1_scope
  T1_CMD=("${T1_GCLOUD}" compute tpus queued-resources describe "${NAME}" "${T1_SCOPE[@]}" "--format=value(state.state)")
}

t1_qr_delete_cmd() {
  t1_scope
  T1_CMD=("${T1_GCLOUD}" compute tpus queued-resources delete "${NAME}" "${T1_SCOPE[@]}" --force --quiet)
}

t1_ssh_cmd() {  # worker remote-command [extra gcloud flags...]
  t1_scope
  local worker=$1 remote=$2
  shift 2
  T1_CMD=("${T1_GCLOUD}" compute tpus tpu-vm ssh "${NAME}" "${T1_SCOPE[@]}" --worker="${worker}" "$@" --command "${remote}")
}

# State of the queued resource (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED ...), or NOT_FOUND.
t1_qr_state() {
  t1_qr_describe_cmd
  local state
  if state=$("${T1_CMD[@]}" 2>/dev/null) && [[ -n ${state} ]]; then
    printf '%s\n' "${state}"
  else
    printf 'NOT_FOUND\n'
  fi
}

# Poll until the queued resource is ACTIVE (0), or it failed / was suspended / timed out (1).
t1_wait_active() {  # poll_seconds timeout_seconds
  local poll=$1 timeout=$2 waited=0 state
  if ((DRY_RUN)); then
    t1_qr_describe_cmd
    t1_cmdline "${T1_CMD[@]}"
    return 0
  fi
  while true; do
    state=$(t1_qr_state)
    case ${state} in
      ACTIVE) t1_log "${NAME} is ACTIVE"; return 0 ;;
      FAILED | SUSPENDING | SUSPENDED | NOT_FOUND | DELETING) t1_log "${NAME} is ${state}"; return 1 ;;
      *) t1_log "${NAME} is ${state}; waiting" ;;
    esac
    if ((timeout > 0 && waited >= timeout)); then
      t1_log "${NAME} not ACTIVE after ${timeout}s"
      return 1
    fi
    sleep "${poll}"
    waited=$((waited + poll))
  done
}

# The script run on every worker for `run.sh`: start the command detached (setsid + nohup, so a dropped ssh does not
# kill it) unless this run is already alive there, then follow its log until it exits and return its exit code.
# The workers' Python environment (tpu/install.sh makes it, tpu/run.sh runs in it), relative to the remote home.
T1_VENV=t1-venv

# `t1 train` exits with this status after saving a checkpoint on SIGTERM/SIGINT (t1_jax.trainer.Preempted).
T1_PREEMPTED_STATUS=75

t1_remote_run_script() {  # detach(0|1) env-exports command
  local detach=$1 exports=$2 command=$3
  local base="${REMOTE_LOGS}/${RUN}"
  # The leader bash traps TERM/INT instead of dying, so `run.sh --stop` (TERM to the whole process group) reaches the
  # command, and the leader waits for it to save and exit before it records the command's status. No subshell: a
  # subshell would reset the trap and die first.
  local inner="trap true TERM INT; ${exports}cd ${REMOTE_DIR} && ${command}; echo \$? > \$HOME/${base}.exit"
  local script="mkdir -p ${REMOTE_LOGS}"
  script+="; if [ -f ${base}.pid ] && kill -0 \"\$(cat ${base}.pid)\" 2>/dev/null; then echo \"t1: run ${RUN} is"
  script+=" already running on \$(hostname); attaching\"; else rm -f ${base}.exit; setsid nohup bash -c"
  script+=" $(t1_quote "${inner}") > ${base}.log 2>&1 < /dev/null & echo \$! > ${base}.pid; fi"
  if ((detach)); then
    script+="; echo \"t1: run ${RUN} started on \$(hostname), pid \$(cat ${base}.pid)\""
  else
    script+="; tail -n +1 --pid=\"\$(cat ${base}.pid)\" -F ${base}.log 2>/dev/null"
    script+="; exit \"\$(cat ${base}.exit 2>/dev/null || echo 255)\""
  fi
  printf '%s' "${script}"
}
