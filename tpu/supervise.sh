#!/usr/bin/env bash
# Keep a training command running on a (Spot) slice: recreate the slice after preemption and run the command again;
# the trainer resumes from the latest checkpoint in its gs:// workdir.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/supervise.sh --project P --zone Z --name N --type T [--spot] [--repo-url URL] [options] -- COMMAND...

Loop until COMMAND succeeds on the slice or the retries run out:
  1. look at the queued resource: create it when missing; delete and recreate it when SUSPENDED/FAILED (preempted);
     wait while it is queued or provisioning;
  2. install the project on every worker (tpu/install.sh) when the slice is new;
  3. run COMMAND on every worker (tpu/run.sh, attached; re-attaches if that run is still alive);
  4. exit 0 when COMMAND exits 0 everywhere; otherwise wait (exponential backoff) and go to 1.
COMMAND must resume by itself, e.g. 't1 train --config X --workdir gs://B/run' restores the newest checkpoint.
With --dry-run it prints the commands of one pass that starts with no slice.

Flags (environment variable in brackets):
  --project P --zone Z --name N --type T --spot --runtime R   as for tpu/create.sh
  --repo-url URL --branch B --remote-dir D --source git|local  as for tpu/install.sh
  --run R --log-dir L --env K=V                                as for tpu/run.sh
  --max-retries K   attempts after the first one (default 20)
  --backoff S       first wait between attempts in seconds, doubled each time (default 60)
  --max-backoff S   longest wait (default 1800)
  --poll S          seconds between state polls while the slice is provisioning (default 60)
  --timeout S       give up on one provisioning wait after S seconds (default 0 = never)
  --delete-when-done  delete the slice after COMMAND succeeds
  --dry-run         print the commands of one pass, one per line, and run nothing
  -h, --help        this help
USAGE
}

HERE=$(dirname "${BASH_SOURCE[0]}")
MAX_RETRIES=20
BACKOFF=60
MAX_BACKOFF=1800
POLL=60
TIMEOUT=0
DELETE_WHEN_DONE=0
SOURCE=git
RUN_EXTRA=()
COMMAND=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --delete-when-done) DELETE_WHEN_DONE=1; shift ;;
    --) shift; COMMAND=("$@"); break ;;
    *)
      if ! t1_common_flag "project zone name type spot runtime repo-url branch remote-dir source run log-dir env
          max-retries backoff max-backoff poll timeout" "$@"; then
        case ${T1_FLAG_KEY} in
          source) SOURCE=${T1_FLAG_VALUE} ;;
          env) RUN_EXTRA+=(--env "${T1_FLAG_VALUE}") ;;
          *)
            t1_require_int "${T1_FLAG_KEY}" "${T1_FLAG_VALUE}"
            case ${T1_FLAG_KEY} in
              max-retries) MAX_RETRIES=${T1_FLAG_VALUE} ;;
              backoff) BACKOFF=${T1_FLAG_VALUE} ;;
              max-backoff) MAX_BACKOFF=${T1_FLAG_VALUE} ;;
              poll) POLL=${T1_FLAG_VALUE} ;;
              timeout) TIMEOUT=${T1_FLAG_VALUE} ;;
            esac ;;
        esac
      fi
      shift "${T1_SHIFT}" ;;
  esac
done
t1_check_slice
t1_check_type
[[ ${#COMMAND[@]} -gt 0 ]] || t1_die "no command: put it after '--', e.g. -- t1 train --config X --workdir gs://B/run"
[[ ${SOURCE} == git && -z ${REPO_URL} ]] && t1_die "no repository: pass --repo-url or set T1_REPO_URL (or --source local)"

SLICE=(--project "${PROJECT}" --zone "${ZONE}" --name "${NAME}")
DRY=()
((DRY_RUN)) && DRY=(--dry-run)
CREATE=("${HERE}/create.sh" "${SLICE[@]}" --type "${ACCEL}" --runtime "${RUNTIME}" --wait --poll "${POLL}"
  --timeout "${TIMEOUT}" "${DRY[@]}")
((SPOT)) && CREATE+=(--spot)
INSTALL=("${HERE}/install.sh" "${SLICE[@]}" --source "${SOURCE}" --branch "${BRANCH}" --remote-dir "${REMOTE_DIR}"
  "${DRY[@]}")
[[ -n ${REPO_URL} ]] && INSTALL+=(--repo-url "${REPO_URL}")
RUN_CMD=("${HERE}/run.sh" "${SLICE[@]}" --type "${ACCEL}" --run "${RUN}" --remote-dir "${REMOTE_DIR}" --log-dir "${LOG_DIR}"
  "${RUN_EXTRA[@]}" "${DRY[@]}" -- "${COMMAND[@]}")
DELETE=("${HERE}/delete.sh" "${SLICE[@]}" "${DRY[@]}")

if ((DRY_RUN)); then
  "${CREATE[@]}"
  "${INSTALL[@]}"
  "${RUN_CMD[@]}"
  if ((DELETE_WHEN_DONE)); then "${DELETE[@]}"; fi
  exit 0
fi

attempt=0
wait_s=${BACKOFF}
installed=0
while true; do
  state=$(t1_qr_state)
  t1_log "attempt $((attempt + 1)) of $((MAX_RETRIES + 1)): ${NAME} is ${state}"
  case ${state} in
    ACTIVE) ;;
    NOT_FOUND)
      installed=0
      "${CREATE[@]}" || true ;;
    SUSPENDING | SUSPENDED | FAILED)
      installed=0
      t1_log "${NAME} was preempted or failed; recreating it"
      "${DELETE[@]}" || true
      "${CREATE[@]}" || true ;;
    *)
      t1_wait_active "${POLL}" "${TIMEOUT}" || true ;;
  esac
  status=1
  if [[ $(t1_qr_state) == ACTIVE ]]; then
    if ((installed)) || "${INSTALL[@]}"; then
      installed=1
      if "${RUN_CMD[@]}"; then status=0; else status=$?; fi
    fi
  fi
  if ((status == 0)); then
    t1_log "command finished on every worker"
    if ((DELETE_WHEN_DONE)); then "${DELETE[@]}"; fi
    exit 0
  fi
  if ((status == T1_PREEMPTED_STATUS)); then  # t1 saved a checkpoint on a stop signal: never "done", not a failure
    t1_log "the run saved a checkpoint and stopped (status ${status}: preempted); resuming in ${BACKOFF}s"
    sleep "${BACKOFF}"
    continue
  fi
  attempt=$((attempt + 1))
  if ((attempt > MAX_RETRIES)); then
    t1_log "giving up after ${attempt} attempts"
    exit 1
  fi
  t1_log "attempt failed (status ${status}); retrying in ${wait_s}s"
  sleep "${wait_s}"
  wait_s=$((wait_s * 2 > MAX_BACKOFF ? MAX_BACKOFF : wait_s * 2))
done
