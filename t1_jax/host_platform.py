"""A quiet first start on machines without a TPU: pick JAX's CPU platform before JAX is imported.

With libtpu installed (the ``tpu`` and ``test`` extras), a JAX process that is not told its platform probes for TPUs
at start-up, and on a machine without one libtpu prints its failures ("Failed to find host bounds for accelerator
type", an ``E0000 ... INVALID_ARGUMENT`` line with a source-location trace, "Unable to initialize backend 'tpu'")
before anything of ours. ``t1`` therefore sets ``JAX_PLATFORMS=cpu`` itself when nothing says otherwise:

* the user has not set ``JAX_PLATFORMS`` (or the old ``JAX_PLATFORM_NAME``): a user's choice always wins;
* JAX is not imported yet (its platform list is read once, at import);
* the host has no accelerator device nodes (``/dev/accel*``: TPU v4 and later; ``/dev/vfio/*``: v5e/v6e VMs;
  ``/dev/nvidia*``, ``/dev/kfd``: GPUs, which JAX would otherwise pick), no Google TPU chip on the PCI bus (the check
  JAX itself makes, :func:`t1_jax.distributed.tpu_chips_on_this_host`) and no TPU environment variables (GKE and
  Megascale set them on TPU pods; ``JAX_FORCE_TPU_INIT`` asks for a TPU explicitly).

On a TPU VM nothing changes. ``t1 compile-check`` is unaffected either way: its compile-only TPU devices come from
``jax.experimental.topologies`` (libtpu loaded as a compiler, :func:`t1_jax.tpu.abstract_mesh_devices`), which works
under ``JAX_PLATFORMS=cpu``.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import MutableMapping, Optional

PLATFORM_ENV = ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")  # the user's own choice, left alone
ACCELERATOR_NODES = ("accel*", "vfio/*", "nvidia[0-9]*", "kfd")  # under /dev
TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
           "TPU_TOPOLOGY", "TPU_HOST_BOUNDS", "TPU_CHIPS_PER_HOST_BOUNDS", "MEGASCALE_COORDINATOR_ADDRESS",
           "JAX_FORCE_TPU_INIT")


def accelerator_evidence(environ: MutableMapping[str, str] = os.environ, dev_root: str = "/dev",
                         pci_root: str = "/sys/bus/pci/devices") -> Optional[str]:
    """What shows this host may have an accelerator (a device node, a TPU chip, a TPU variable), or None."""
    from t1_jax.distributed import tpu_chips_on_this_host

    for pattern in ACCELERATOR_NODES:
        found = sorted(glob.glob(os.path.join(dev_root, pattern)))
        if found:
            return f"device {found[0]}"
    if tpu_chips_on_this_host(pci_root):
        return "a Google TPU chip on the PCI bus"
    names = [name for name in TPU_ENV if name in environ]
    return f"environment variable {names[0]}" if names else None


def quiet_cpu_start(environ: MutableMapping[str, str] = os.environ, dev_root: str = "/dev",
                    pci_root: str = "/sys/bus/pci/devices") -> bool:
    """Set ``JAX_PLATFORMS=cpu`` in ``environ`` when the module docstring's conditions hold; True when it did."""
    if any(name in environ for name in PLATFORM_ENV) or "jax" in sys.modules:
        return False
    if accelerator_evidence(environ, dev_root, pci_root) is not None:
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    return True
