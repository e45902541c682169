"""Starting JAX's distributed system: on every host of a TPU slice (GCE TPU VMs, GKE), never on a laptop.

``jax.distributed.initialize()`` must run before anything touches the backend on every host of a multi-host slice:
without it each host sees only its own chips, orbax's async checkpointer raises "Distributed system is not
available", and the preemption sync point never fires. How a host learns that it is part of a slice differs:

* **GCE TPU VMs** (``gcloud compute tpus`` / ``tpu/create.sh``): JAX asks the VM's metadata server for the worker
  list. We recognise such a host by its TPU chips on the PCI bus (vendor ``0x1ae0``, Google), the check JAX itself
  makes; a single-host slice is a cluster of one process, which is harmless.
* **GKE**: ``TPU_WORKER_HOSTNAMES`` (or ``TPU_PROCESS_ADDRESSES``) lists the workers; Megascale sets
  ``MEGASCALE_COORDINATOR_ADDRESS``.
* **Explicit** (the multi-process CPU tests, or any other cluster): ``mesh.coordinator_address``,
  ``mesh.num_processes``, ``mesh.process_id``.

``T1_DISTRIBUTED`` overrides the detection: ``0`` never initialises, ``1`` always calls ``jax.distributed.initialize()``
(JAX's own cluster detection, e.g. SLURM). Each host logs one line: process index and count, devices, the slice.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Optional

from t1_jax.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

OVERRIDE_ENV = "T1_DISTRIBUTED"
GOOGLE_PCI_VENDOR = "0x1ae0"
_STATE: Optional["DistributedInfo"] = None


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    initialized: bool
    how: str  # explicit | gke | megascale | gce-tpu-vm | forced | single-process | disabled
    process_index: int = 0
    process_count: int = 1

    def line(self) -> str:
        import jax

        slice_name = os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("T1_TOPOLOGY") or "no TPU slice"
        return (f"distributed: process {self.process_index} of {self.process_count} ({self.how}); "
                f"{jax.local_device_count()} local / {jax.device_count()} global devices; {slice_name}")


def tpu_chips_on_this_host(pci_root: str = "/sys/bus/pci/devices") -> int:
    """Number of Google (TPU) PCI devices; 0 on every machine that is not a Cloud TPU VM."""
    count = 0
    for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
        try:
            with open(vendor) as f:
                count += f.read().strip() == GOOGLE_PCI_VENDOR
        except OSError:
            continue
    return count


def detect(cfg: MeshConfig, environ=os.environ, pci_root: str = "/sys/bus/pci/devices") -> str:
    """How this process should join a distributed run (see the module docstring); ``single-process`` = do not."""
    override = environ.get(OVERRIDE_ENV, "").strip().lower()
    if override in ("0", "false", "no", "off"):
        return "disabled"
    if cfg.coordinator_address:
        return "explicit"
    if override in ("1", "true", "yes", "on"):
        return "forced"
    if override:
        raise ConfigError(f"{OVERRIDE_ENV}={environ[OVERRIDE_ENV]!r}: use 1 (always initialise) or 0 (never)")
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "gke"
    if "MEGASCALE_COORDINATOR_ADDRESS" in environ:
        return "megascale"
    if tpu_chips_on_this_host(pci_root) > 0:
        return "gce-tpu-vm"
    return "single-process"


def initialize(cfg: MeshConfig) -> DistributedInfo:
    """Join the distributed run once per process (idempotent); returns what happened and logs one line."""
    global _STATE
    if _STATE is not None:
        return _STATE
    import jax

    how = detect(cfg)
    if how == "explicit":
        if cfg.num_processes <= 0 or cfg.process_id < 0:
            raise ConfigError("mesh.coordinator_address needs mesh.num_processes > 0 and mesh.process_id >= 0")
        jax.distributed.initialize(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id)
    elif how in ("gke", "megascale", "gce-tpu-vm", "forced"):
        jax.distributed.initialize()
    _STATE = DistributedInfo(initialized=how not in ("single-process", "disabled"), how=how,
                             process_index=jax.process_index(), process_count=jax.process_count())
    log.info("%s", _STATE.line())
    return _STATE


def preemption_service_active() -> bool:
    """Whether JAX's preemption sync point is available (the distributed system is up): then the preemption notice
    (SIGTERM) is XLA's to catch, and every host learns of it through ``reached_preemption_sync_point``."""
    return _STATE is not None and _STATE.initialized


def agreed_latest_step(latest: Optional[int]) -> Optional[int]:
    """Process 0's view of the newest complete checkpoint, on every host (each lists the shared workdir itself, and
    a checkpoint finishing during the listing must not make hosts restore different steps)."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return latest
    from jax.experimental import multihost_utils

    value = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if latest is None else latest)))
    return None if value < 0 else value


def sum_over_hosts(count: int) -> int:
    """``count`` summed over every process (each host counts its own rows of a batch)."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int64(count))))
