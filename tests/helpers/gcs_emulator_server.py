"""Run gcp-storage-emulator with the response headers real GCS sends on object reads.

Usage: python -m tests.helpers.gcs_emulator_server PORT BUCKET

GCS returns an object's generation in the ``x-goog-generation`` header of every media read; tensorstore's gcs driver
(orbax's OCDBT manifests, which are read and rewritten during a save) relies on it and reports "Malformed
StorageGeneration" without it. The emulator does not send it, so this wrapper adds ``x-goog-generation`` and
``x-goog-metageneration`` to its object reads. Nothing else is changed.
"""
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects


def _with_generation(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        handler(request, response, storage, *args, **kwargs)
        params = getattr(request, "params", {}) or {}
        if "object_id" not in params or "bucket_name" not in params:
            return
        try:
            obj = storage.get_file_obj(params["bucket_name"], params["object_id"])
        except Exception:  # not found: the handler already answered 404
            return
        response["x-goog-generation"] = str(obj.get("generation", "1"))
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    return wrapped


_PATCHED = {objects.download: _with_generation(objects.download), objects.get: _with_generation(objects.get)}
server.HANDLERS = tuple((regex, {method: _PATCHED.get(fn, fn) for method, fn in handlers.items()})
                        for regex, handlers in server.HANDLERS)

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server.Server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
