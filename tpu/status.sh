#!/usr/bin/env bash
# Print the state of a TPU slice's queued resource (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED ...).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/status.sh --project P --zone Z --name N [--dry-run]

Print the queued resource's state: ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDING, SUSPENDED,
FAILED, DELETING, or NOT_FOUND when it does not exist.
USAGE
  t1_slice_flags_help
}

t1_parse_slice_flags "$@"

if ((DRY_RUN)); then
  t1_qr_describe_cmd
  t1_cmdline "${T1_CMD[@]}"
else
  t1_qr_state
fi
