#!/usr/bin/env bash
# Install the project on every worker of a slice: a git checkout (or this working tree's HEAD) + pip install -e .[tpu].
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
Usage: tpu/install.sh --project P --zone Z --name N [--source git|local] [--repo-url URL] [--branch B] [--dry-run]

Install t1-jax on every worker, in ~/REMOTE_DIR, into a Python >= 3.11 venv at ~/t1-venv (the worker's python3 when
it is >= 3.11, else a CPython 3.11 that uv downloads), with 'pip install -e ".[tpu]"'. Safe to re-run (an existing
checkout is moved to the branch's latest commit; an existing venv is reused).
  --source git    (default) clone --repo-url at --branch on each worker (fetch + checkout when already cloned)
  --source local  pack this working tree's HEAD with 'git archive' (commit first: uncommitted edits are not
                  included), copy it to every worker with 'tpu-vm scp --worker=all' and unpack it

Flags (environment variable in brackets):
  --project P       Google Cloud project [T1_TPU_PROJECT]
  --zone Z          zone [T1_TPU_ZONE]
  --name N          slice (node) name [T1_TPU_NAME]
  --repo-url URL    git URL to clone [T1_REPO_URL]
  --branch B        branch or tag (default main) [T1_REPO_BRANCH]
  --remote-dir D    checkout directory relative to the remote home (default t1-jax) [T1_REMOTE_DIR]
  --dry-run         print the commands, one per line, and run nothing
  -h, --help        this help
USAGE
}

SOURCE=git
while [[ $# -gt 0 ]]; do
  if ! t1_common_flag "project zone name repo-url branch remote-dir source" "$@"; then
    [[ ${T1_FLAG_VALUE} == git || ${T1_FLAG_VALUE} == local ]] ||
      t1_die "--source must be git or local, got '${T1_FLAG_VALUE}'"
    SOURCE=${T1_FLAG_VALUE}
  fi
  shift "${T1_SHIFT}"
done
t1_check_slice

# A Python the pins support (>= 3.11) in a venv, ~/t1-venv: the worker's python3 when it is new enough (and has venv),
# else a managed CPython 3.11 from uv (the Ubuntu 22.04 TPU runtimes ship 3.10). run.sh puts ~/t1-venv/bin first on
# PATH. The version test is a command's status, so it survives the remote shell's quoting unchanged.
VENV="\$HOME/${T1_VENV}"
PIP="if [ ! -x ${VENV}/bin/python ]; then if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
PIP+=" 2>/dev/null && python3 -m venv ${VENV}; then echo \"t1: ${VENV} from \$(python3 --version)\"; else"
PIP+=" python3 -m pip install --user --upgrade uv && \$HOME/.local/bin/uv venv --seed --python 3.11 ${VENV}"
PIP+=" && echo \"t1: ${VENV} from CPython 3.11 (uv)\"; fi; fi; ${VENV}/bin/python -m pip install --upgrade pip"
PIP+=" && ${VENV}/bin/python -m pip install -e '.[tpu]'"
if [[ ${SOURCE} == git ]]; then
  [[ -n ${REPO_URL} ]] || t1_die "no repository: pass --repo-url or set T1_REPO_URL (or use --source local)"
  url=$(t1_quote "${REPO_URL}")
  branch=$(t1_quote "${BRANCH}")
  remote="set -e; if [ -d ${REMOTE_DIR}/.git ]; then git -C ${REMOTE_DIR} fetch --depth=1 origin ${branch}"
  remote+=" && git -C ${REMOTE_DIR} checkout --force FETCH_HEAD; else git clone --depth=1 --branch ${branch} ${url}"
  remote+=" ${REMOTE_DIR}; fi; cd ${REMOTE_DIR} && ${PIP}"
else
  archive="${TMPDIR:-/tmp}/t1-jax-${NAME}.tar.gz"
  t1_run git -C "${T1_REPO_ROOT}" archive --format=tar.gz --output="${archive}" HEAD
  t1_scope
  t1_run "${T1_GCLOUD}" compute tpus tpu-vm scp "${archive}" "${NAME}:t1-jax-src.tar.gz" "${T1_SCOPE[@]}" --worker=all
  remote="set -e; mkdir -p ${REMOTE_DIR} && tar -xzf t1-jax-src.tar.gz -C ${REMOTE_DIR} && cd ${REMOTE_DIR} && ${PIP}"
fi
t1_ssh_cmd all "${remote}"
t1_run "${T1_CMD[@]}"
