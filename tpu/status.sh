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

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          queued-resource id [T1_TPU_NAME]
  --dry-run         print the gcloud command and run nothing
  -h, --help        this help
USAGE
}

while [[ $# -gt 0 ]]; do
  t1_common_flag "project zone name" "$@" || t1_die "unknown flag --${T1_FLAG_KEY} (see --help)"
  shift "${T1_SHIFT}"
done
t1_check_slice

if ((DRY_RUN)); then
  t1_qr_describe_cmd
  t1_cmdline "${T1_CMD[@]}"
else
  t1_qr_state
fi
