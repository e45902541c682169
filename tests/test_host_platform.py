"""``t1`` picks the CPU platform before JAX loads on a host without accelerators, and leaves every other host alone."""
import os
import subprocess
import sys

import pytest

from t1_jax import host_platform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_PCI = "/nonexistent-pci"


def _host(tmp_path, *nodes):
    """A fake /dev holding ``nodes``."""
    dev = tmp_path / "dev"
    dev.mkdir(parents=True)
    for node in nodes:
        (dev / node).parent.mkdir(parents=True, exist_ok=True)
        (dev / node).write_text("")
    return str(dev)


def _pci(tmp_path, vendor):
    device = tmp_path / "pci" / "0000:00:05.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    return str(tmp_path / "pci")


def test_bare_host_gets_cpu(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)  # as in a fresh `t1` process
    env = {"PATH": "/bin"}
    assert host_platform.quiet_cpu_start(env, _host(tmp_path), NO_PCI) is True
    assert env["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("nodes,env,evidence", [
    (("accel0",), {}, "accel0"),  # TPU v4 / v5p VM
    (("vfio/0",), {}, "vfio"),  # v5e / v6e VM
    (("nvidia0",), {}, "nvidia0"),  # a GPU: JAX should pick it
    ((), {"TPU_ACCELERATOR_TYPE": "v5p-8"}, "TPU_ACCELERATOR_TYPE"),
    ((), {"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_HOSTNAMES"),  # GKE
    ((), {"JAX_FORCE_TPU_INIT": "1"}, "JAX_FORCE_TPU_INIT"),
])
def test_accelerator_hosts_untouched(tmp_path, monkeypatch, nodes, env, evidence):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    env = dict(env)
    dev = _host(tmp_path, *nodes)
    assert evidence in host_platform.accelerator_evidence(env, dev, NO_PCI)
    assert host_platform.quiet_cpu_start(env, dev, NO_PCI) is False
    assert "JAX_PLATFORMS" not in env


def test_tpu_on_pci_bus_untouched(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    env = {}
    assert host_platform.quiet_cpu_start(env, _host(tmp_path), _pci(tmp_path, "0x1ae0")) is False
    assert "JAX_PLATFORMS" not in env
    assert host_platform.quiet_cpu_start(env, _host(tmp_path / "other"), _pci(tmp_path / "other", "0x8086")) is True


@pytest.mark.parametrize("name,value", [("JAX_PLATFORMS", "tpu"), ("JAX_PLATFORMS", ""), ("JAX_PLATFORM_NAME", "cpu")])
def test_users_choice_wins(tmp_path, monkeypatch, name, value):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    env = {name: value}
    assert host_platform.quiet_cpu_start(env, _host(tmp_path), NO_PCI) is False
    assert env == {name: value}


def test_jax_already_imported_untouched(tmp_path):
    import jax  # noqa: F401  (conftest's process has it)

    env = {}
    assert host_platform.quiet_cpu_start(env, _host(tmp_path), NO_PCI) is False
    assert env == {}


# The real thing, in fresh processes: `t1`'s main with and without JAX_PLATFORMS, then JAX's first backend start.
_CHILD = """
import os, sys
from t1_jax import cli
cli.main([])  # no subcommand: prints the help, after the platform choice
print("JAX_PLATFORMS=" + repr(os.environ.get("JAX_PLATFORMS")), file=sys.stderr)
if os.environ.get("JAX_PLATFORMS") == "cpu":
    import jax
    print("backend=" + jax.default_backend(), file=sys.stderr)
"""


def _run_child(env_changes: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in host_platform.PLATFORM_ENV + host_platform.TPU_ENV}
    env.update(env_changes, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_t1_on_this_host_is_quiet():
    if host_platform.accelerator_evidence() is not None:
        pytest.skip("this host has an accelerator: t1 leaves the platform to JAX here")
    err = _run_child({})
    assert "JAX_PLATFORMS='cpu'" in err and "backend=cpu" in err
    for noise in ("libtpu", "TPU", "INVALID_ARGUMENT", "Unable to initialize backend"):
        assert noise not in err.replace("backend=cpu", ""), err


def test_t1_leaves_tpu_hosts_and_users_alone():
    assert "JAX_PLATFORMS=None" in _run_child({"TPU_ACCELERATOR_TYPE": "v5p-8"})
    assert "JAX_PLATFORMS='tpu,cpu'" in _run_child({"JAX_PLATFORMS": "tpu,cpu"})
