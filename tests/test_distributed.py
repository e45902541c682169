"""Joining a distributed run: how each kind of host is recognised (GCE TPU VM by its PCI devices, GKE and Megascale
by their variables, explicit settings, the T1_DISTRIBUTED override) and what ``initialize`` then calls."""
import pytest

from t1_jax import distributed
from t1_jax.config import ConfigError, MeshConfig


def _pci(tmp_path, vendors):
    for i, vendor in enumerate(vendors):
        device = tmp_path / f"0000:00:0{i}.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
    return str(tmp_path)


@pytest.mark.parametrize("env,vendors,cfg,expected", [
    ({}, ["0x8086", "0x1af4"], MeshConfig(), "single-process"),  # a laptop / CI: Intel + virtio
    ({}, ["0x8086", "0x1ae0", "0x1ae0"], MeshConfig(), "gce-tpu-vm"),  # Cloud TPU VM: Google devices
    ({"TPU_WORKER_HOSTNAMES": "t1-w-0,t1-w-1"}, [], MeshConfig(), "gke"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, [], MeshConfig(), "single-process"),  # one GKE worker, no TPU seen
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, [], MeshConfig(), "megascale"),
    ({}, [], MeshConfig(coordinator_address="localhost:1234", num_processes=2, process_id=0), "explicit"),
    ({"T1_DISTRIBUTED": "0"}, ["0x1ae0"], MeshConfig(coordinator_address="x:1", num_processes=2, process_id=1),
     "disabled"),
    ({"T1_DISTRIBUTED": "1"}, [], MeshConfig(), "forced"),
])
def test_detect(tmp_path, env, vendors, cfg, expected):
    assert distributed.detect(cfg, environ=env, pci_root=_pci(tmp_path, vendors)) == expected


def test_bad_override_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="T1_DISTRIBUTED='maybe': use 1"):
        distributed.detect(MeshConfig(), environ={"T1_DISTRIBUTED": "maybe"}, pci_root=str(tmp_path))


def test_initialize_calls_jax_once_per_process(monkeypatch, tmp_path, caplog):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(distributed, "_STATE", None)
    monkeypatch.setattr(distributed, "tpu_chips_on_this_host", lambda *a: 4)  # as on a TPU VM
    monkeypatch.delenv("T1_DISTRIBUTED", raising=False)
    caplog.set_level("INFO")
    info = distributed.initialize(MeshConfig())
    assert info.how == "gce-tpu-vm" and info.initialized and calls == [((), {})]  # JAX asks the metadata server
    assert distributed.initialize(MeshConfig()) is info and len(calls) == 1  # idempotent
    assert "distributed: process 0 of 1 (gce-tpu-vm); 8 local / 8 global devices" in caplog.text

    monkeypatch.setattr(distributed, "_STATE", None)
    calls.clear()
    cfg = MeshConfig(coordinator_address="localhost:1234", num_processes=2, process_id=1)
    assert distributed.initialize(cfg).how == "explicit"
    assert calls == [((), {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1})]

    monkeypatch.setattr(distributed, "_STATE", None)
    monkeypatch.setattr(distributed, "tpu_chips_on_this_host", lambda *a: 0)
    calls.clear()
    info = distributed.initialize(MeshConfig())
    assert (info.how, info.initialized, calls) == ("single-process", False, [])
    with pytest.raises(ConfigError, match="needs mesh.num_processes"):
        monkeypatch.setattr(distributed, "_STATE", None)
        distributed.initialize(MeshConfig(coordinator_address="localhost:1"))


def test_encode_batch_is_per_slice(monkeypatch):
    """retrieval.encode_batch_size sizes a whole slice (the eval layouts: 2048 on a v5p-64); each of its 8 hosts
    encodes its share with 2048 / 8 rows at a time (the Encoder rounds that up to its mesh's batch shards)."""
    import jax

    from t1_jax.encoder import host_batch_size

    assert host_batch_size(32) == 32  # one host: the whole batch
    monkeypatch.setattr(jax, "process_count", lambda: 8)
    assert host_batch_size(2048) == 256 and host_batch_size(8) == 1 and host_batch_size(4) == 1


def test_multihost_helpers_are_identity_on_one_process():
    assert distributed.agreed_latest_step(None) is None and distributed.agreed_latest_step(7) == 7
    assert distributed.sum_over_hosts(123) == 123
