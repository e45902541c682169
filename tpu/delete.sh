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
USAGE
  t1_slice_flags_help
}

t1_parse_slice_flags "$@"

t1_qr_delete_cmd
t1_run "${T1_CMD[@]}"
