"""Test harness: 8 fake CPU devices, set before JAX is imported anywhere, so every test can build real meshes."""
import os

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu may be installed (compile checks); tests run on CPU
os.environ.setdefault("T1_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests reach GCS only through the local emulator (tests/gcs.py), which has no bucket-type (HNS) API: read by gcsfs at
# import, so set before anything imports it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("T1_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data`` (or $T1_SHARED_DATA); tests that need it are skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set T1_SHARED_DATA)")
    return SHARED_DATA


def pytest_configure(config):
    import jax

    assert jax.device_count() == 8, (
        f"tests need 8 fake CPU devices but JAX sees {jax.device_count()}: JAX was imported before tests/conftest.py "
        "could set XLA_FLAGS")
