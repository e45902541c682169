"""Test harness: 8 fake CPU devices, set before JAX is imported anywhere, so every test can build real meshes."""
import os

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The tests' programs are tiny and each is compiled once or twice: XLA:CPU's LLVM optimisation costs more than it
# saves (measured: a 2-layer stage-2 loss+grad compiled in 10.6 s at the default level, 5.6 s at 0; the three heaviest
# model test files 26% faster). Numerics stay IEEE (XLA:CPU has no fast-math by default); the TPU compile tests pass unchanged with it.
# Subprocesses that set their own XLA_FLAGS add FAST_COMPILE too.
FAST_COMPILE = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in _flags:
    _flags += " " + FAST_COMPILE
os.environ["XLA_FLAGS"] = _flags.strip()
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


# The longest files (about 1-4 minutes each on a 2-core machine) start first, so that with pytest-xdist's one-file-
# per-worker scheduling the short files fill in around them instead of one long file running alone at the end.
# Longest first (whole-file times on a 2-core host with two workers: about 200, 150, 115 (the README run), 95, 85,
# 55-80 s each for the rest), so that the greedy file-at-a-time assignment leaves no long file alone at the end.
LONG_FIRST = ("test_precision.py", "test_trainer.py", "test_multihost.py", "test_gcs.py",
              "test_quickstart_e2e.py", "test_compile_check.py", "test_grpo_stage.py", "test_contrastive_stage.py",
              "test_resume_check.py", "test_generate.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: file order kept otherwise
