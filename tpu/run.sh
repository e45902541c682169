#!/usr/bin/env bash
# Run the same command on every worker of a slice, one log per worker, detached from the ssh session.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/run.sh --project P --zone Z --name N [--run R] [--env K=V ...] [--detach|--stream] [--dry-run] -- COMMAND...
       tpu/run.sh --project P --zone Z --name N [--run R] --stop [--dry-run]

Run COMMAND in ~/REMOTE_DIR on every worker at once ('tpu-vm ssh --worker=all'). On each worker the command runs
under setsid+nohup with its output in ~/t1-logs/R.log, so a dropped ssh connection does not stop training (PATH
starts with ~/t1-venv/bin, the environment tpu/install.sh made); running
the same --run again while it is alive re-attaches instead of starting a second copy. Without --detach the script
follows the logs until the command ends on every worker and exits with its status; gcloud saves one log file per
worker under LOG_DIR/N/R/ (or, with --stream, interleaves them on stdout). ~/.local/bin is put on PATH, so 't1' works.

Example:
  tpu/run.sh --name t1-v5p --run stage1 -- t1 train --config experiments/t1_4b_stage1.py --workdir gs://B/stage1

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          slice (node) name [T1_TPU_NAME]
  --type T          accelerator type, exported to the command as T1_TOPOLOGY (the experiments' layout row)
                    [T1_TPU_TYPE]
  --run R           run name: remote log t1-logs/R.log (default train) [T1_RUN_NAME]
  --remote-dir D    project checkout on the workers (default t1-jax) [T1_REMOTE_DIR]
  --log-dir L       local folder for per-worker logs (default tpu-logs) [T1_LOG_DIR]
  --env K=V         export K=V before COMMAND (repeatable)
  --detach          start the command and return at once (follow it with tpu/logs.sh)
  --stop            stop run R on every worker (SIGTERM to its process group); no COMMAND
  --stream          print every worker's output on stdout instead of per-worker files
  --dry-run         print the commands, one per line, and run nothing
  -h, --help        this help
USAGE
}

DETACH=0
STREAM=0
STOP=0
# shellcheck disable=SC2016  # expanded on the workers, not here
EXPORTS="export PATH=\"\$HOME/${T1_VENV}/bin:\$HOME/.local/bin:\$PATH\"; "
COMMAND=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --detach) DETACH=1; shift ;;
    --stream) STREAM=1; shift ;;
    --stop) STOP=1; shift ;;
    --) shift; COMMAND=("$@"); break ;;
    *)
      if ! t1_common_flag "project zone name type run remote-dir log-dir env" "$@"; then
        [[ ${T1_FLAG_VALUE} =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || t1_die "--env needs KEY=VALUE, got '${T1_FLAG_VALUE}'"
        EXPORTS+="export ${T1_FLAG_VALUE%%=*}=$(t1_quote "${T1_FLAG_VALUE#*=}"); "
      fi
      shift "${T1_SHIFT}" ;;
  esac
done
t1_check_slice
# The experiments pick their layout row from T1_TOPOLOGY (TPU_ACCELERATOR_TYPE is not set on every image).
[[ -n ${ACCEL} ]] && EXPORTS+="export T1_TOPOLOGY=$(t1_quote "${ACCEL/#v5e-/v5litepod-}"); "
if ((STOP)); then
  [[ ${#COMMAND[@]} -eq 0 ]] || t1_die "--stop takes no command"
  pid="${REMOTE_LOGS}/${RUN}.pid"
  t1_ssh_cmd all "if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2>/dev/null; then kill -TERM -- -\"\$(cat ${pid})\"\
 && echo \"t1: stopped run ${RUN} on \$(hostname)\"; else echo \"t1: run ${RUN} is not running on \$(hostname)\"; fi"
  t1_run "${T1_CMD[@]}"
  exit 0
fi
[[ ${#COMMAND[@]} -gt 0 ]] || t1_die "no command: put it after '--', e.g. -- t1 train --config X --workdir gs://B/run"
((DETACH && STREAM)) && t1_die "--detach and --stream exclude each other"

remote=$(t1_remote_run_script "${DETACH}" "${EXPORTS}" "$(t1_cmdline "${COMMAND[@]}")")
if ((DETACH || STREAM)); then
  t1_ssh_cmd all "${remote}"
else
  out="${LOG_DIR}/${NAME}/${RUN}"
  t1_run mkdir -p "${out}"
  t1_ssh_cmd all "${remote}" --output-directory="${out}"
fi
t1_run "${T1_CMD[@]}"
