"""A local GCS emulator on 127.0.0.1 for gs:// tests, and the environment that points
tensorstore (orbax's arrays), gcsfs (etils.epath) and google-cloud-storage at it.

Two gaps of gcp-storage-emulator are filled when this module runs as
`python -m tests.gcs_emulator start ...` (then the emulator starts with those arguments):
- object data comes without the `x-goog-generation` header, so tensorstore reads every
  object as generation 0 and its conditional writes (OCDBT manifests, as orbax writes
  them) fail with "Malformed StorageGeneration";
- there is no `moveTo` (gcsfs renames with it; on a 501 it retries for ~30 s, then
  copies and deletes).
"""

import contextlib
from http import HTTPStatus
import pathlib
import socket
import subprocess
import sys
import time


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,            # gcsfs and google-cloud-storage.
      "FSSPEC_GCS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else each call waits 60 s.
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",    # tensorstore: no metadata server.
      "GOOGLE_CLOUD_PROJECT": "test",
  }


@contextlib.contextmanager
def serve(bucket: str):
  """Runs an in-memory emulator holding `bucket`; yields its environment variables."""
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "tests.gcs_emulator", "start", "--host=127.0.0.1",
       f"--port={port}", "--in-memory", f"--default-bucket={bucket}", "--quiet"],
      cwd=pathlib.Path(__file__).parent.parent, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        break
      if proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f"the GCS emulator did not start (exit code {proc.poll()})")
      time.sleep(0.1)
    yield environment(port)
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def _with_generation_headers(download):
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
    except Exception:  # pylint: disable=broad-except
      return  # not found: the original handler answered 404.
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]
  return handler


def _move(objects):
  def handler(request, response, storage, *args, **kwargs):
    request.params["dest_bucket_name"] = request.params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == HTTPStatus.OK:
      storage.delete_file(request.params["bucket_name"], request.params["object_id"])
  return handler


def _main():
  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import __main__ as emulator
  from gcp_storage_emulator import server
  from gcp_storage_emulator import settings
  from gcp_storage_emulator.handlers import objects
  original = objects.download
  objects.download = _with_generation_headers(original)  # objects.get calls it too.
  for _, methods in server.HANDLERS:
    for method, handler in methods.items():
      if handler is original:
        methods[method] = objects.download
  move_route = (rf"^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/"
                r"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$")
  server.HANDLERS = ((move_route, {server.POST: _move(objects)}), *server.HANDLERS)
  emulator.main(sys.argv[1:])


if __name__ == "__main__":
  _main()
