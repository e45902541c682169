#!/usr/bin/env bash
# Show or follow the log of a run on one worker, or fetch every worker's log into local files.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/logs.sh --project P --zone Z --name N [--run R] [--worker W|all] [--lines K] [--follow] [--dry-run]

Print the last K lines of ~/t1-logs/R.log on worker W (default 0; with --follow, keep printing as it grows), or,
with --worker all, save the last K lines of every worker's log to LOG_DIR/N/R/logs/ (one file per worker).

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          slice (node) name [T1_TPU_NAME]
  --run R           run name (default train) [T1_RUN_NAME]
  --worker W        worker index, or all (default 0)
  --lines K         lines to show (default 100)
  --follow          keep following the log (one worker only)
  --log-dir L       local folder for --worker all (default tpu-logs) [T1_LOG_DIR]
  --dry-run         print the commands, one per line, and run nothing
  -h, --help        this help
USAGE
}

WORKER=0
LINES=100
FOLLOW=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --follow) FOLLOW=1; shift ;;
    *)
      if ! t1_common_flag "project zone name run log-dir worker lines" "$@"; then
        case ${T1_FLAG_KEY} in
          worker)
            [[ ${T1_FLAG_VALUE} == all || ${T1_FLAG_VALUE} =~ ^[0-9]+$ ]] ||
              t1_die "--worker must be a worker index or all, got '${T1_FLAG_VALUE}'"
            WORKER=${T1_FLAG_VALUE} ;;
          lines) t1_require_int lines "${T1_FLAG_VALUE}"; LINES=${T1_FLAG_VALUE} ;;
        esac
      fi
      shift "${T1_SHIFT}" ;;
  esac
done
t1_check_slice

log="${REMOTE_LOGS}/${RUN}.log"
if [[ ${WORKER} == all ]]; then
  ((FOLLOW)) && t1_die "--follow needs a single --worker (logs of all workers are saved to files)"
  out="${LOG_DIR}/${NAME}/${RUN}/logs"
  t1_run mkdir -p "${out}"
  t1_ssh_cmd all "tail -n ${LINES} ${log}" --output-directory="${out}"
elif ((FOLLOW)); then
  t1_ssh_cmd "${WORKER}" "tail -n ${LINES} -F ${log}"
else
  t1_ssh_cmd "${WORKER}" "tail -n ${LINES} ${log}"
fi
t1_run "${T1_CMD[@]}"
