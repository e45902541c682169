"""A local GCS API for the tests: the pure-Python ``gcp-storage-emulator`` in a subprocess (with the generation headers
of real GCS, tests/helpers/gcs_emulator_server.py), and the environment that
points gcsfs (``t1_jax.fs``, orbax's directories), tensorstore (orbax's arrays, embedding stores) and
google-cloud-storage (tensorboardX) at it."""
import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BUCKET = "t1-test-bucket"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credentials
        # gcsfs asks a gRPC control API for the bucket type first (hierarchical namespace); the emulator has none, and
        # the probe would time out (60 s per call) before falling back to plain GCS. Off: plain GCS at once.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": "t1-test",
    }


@contextlib.contextmanager
def gcs_emulator():
    """Start the emulator with ``BUCKET`` created; yields the environment to run with (set in os.environ too)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Its log goes to a file: the emulator prints a traceback for every request it fails, and a pipe nobody reads
    # fills after 64 KiB and then blocks the server mid-request (seen: a whole CI run hung in gcsfs).
    log_file = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.gcs_emulator_server", str(port), BUCKET],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log_file.seek(0)
                    raise RuntimeError(f"gcp-storage-emulator did not start: {log_file.read().decode()[-2000:]}")
                time.sleep(0.2)
        env = emulator_env(url)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        _forget_cached_filesystems()
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _forget_cached_filesystems()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def _forget_cached_filesystems() -> None:
    """fsspec caches filesystem instances (with their endpoint) and read FSSPEC_* variables at import; a new emulator
    needs new instances and the anonymous token."""
    try:
        import fsspec

        if os.environ.get("FSSPEC_GCS_TOKEN"):
            fsspec.config.conf.setdefault("gcs", {})["token"] = os.environ["FSSPEC_GCS_TOKEN"]
        else:
            fsspec.config.conf.get("gcs", {}).pop("token", None)
        fsspec.AbstractFileSystem.clear_instance_cache()
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    except ImportError:
        pass
