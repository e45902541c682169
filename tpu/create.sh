#!/usr/bin/env bash
# Create a TPU slice through a queued resource (on-demand or Spot), optionally waiting until it is ACTIVE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/create.sh --project P --zone Z --name N --type v5p-8 [--spot] [--runtime R] [--wait] [--dry-run]

Request a TPU slice with 'gcloud compute tpus queued-resources create' (the node gets the same id as the queued
resource). The runtime version defaults to the generation's JAX image: v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
v5litepod (v5e) v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e.

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          queued-resource and node id [T1_TPU_NAME]
  --type T          accelerator type: v4-8, v4-32, v5litepod-16 (v5e-16), v5p-8, v5p-64, v6e-8 ... [T1_TPU_TYPE]
  --spot            Spot capacity: cheaper, preemptible [T1_TPU_SPOT=1]
  --runtime R       TPU VM software version [T1_TPU_RUNTIME]
  --wait            poll until the slice is ACTIVE (exit 1 if it fails or is suspended)
  --poll S          seconds between polls (default 60)
  --timeout S       give up waiting after S seconds (default 0 = wait forever)
  --dry-run         print the gcloud commands, one per line, and run nothing
  -h, --help        this help
USAGE
}

WAIT=0
POLL=60
TIMEOUT=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --wait) WAIT=1; shift ;;
    *)
      if ! t1_common_flag "project zone name type spot runtime poll timeout" "$@"; then
        t1_require_int "${T1_FLAG_KEY}" "${T1_FLAG_VALUE}"
        case ${T1_FLAG_KEY} in
          poll) POLL=${T1_FLAG_VALUE} ;;
          timeout) TIMEOUT=${T1_FLAG_VALUE} ;;
        esac
      fi
      shift "${T1_SHIFT}" ;;
  esac
done
t1_check_slice
t1_check_type

t1_qr_create_cmd
t1_run "${T1_CMD[@]}"
if ((WAIT)); then
  t1_wait_active "${POLL}" "${TIMEOUT}" || { t1_log "${NAME} did not become ACTIVE"; exit 1; }
fi
