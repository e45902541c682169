#!/usr/bin/env bash
# Delete a TPU slice: the queued resource and (--force) its node.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/delete.sh --project P --zone Z --name N [--dry-run]

Delete the queued resource N and its TPU node ('gcloud compute tpus queued-resources delete --force --quiet').
Checkpoints and logs written to gs:// stay; files on the workers are lost.

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

t1_qr_delete_cmd
t1_run "${T1_CMD[@]}"
