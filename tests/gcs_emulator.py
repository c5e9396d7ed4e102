"""A local GCS emulator on 127.0.0.1 for gs:// tests, and the environment that points
tensorstore (orbax's arrays), gcsfs (etils.epath) and google-cloud-storage at it.

Two gaps of gcp-storage-emulator are filled when this module runs as
`python -m tests.gcs_emulator start ...` (then the emulator starts with those arguments):
- object data comes without the `x-goog-generation` header, so tensorstore reads every
  object as generation 0 and its conditional writes (OCDBT manifests, as orbax writes
  them) fail with "Malformed StorageGeneration";
- there is no `moveTo` (gcsfs renames with it; on a 501 it retries for ~30 s, then
  copies and deletes).
It also stores on disk when given a directory, so that it can be killed and started
again with its objects, and can be told to die at the first write of an object whose
name contains a given text (to stop it in the middle of a checkpoint save).
"""

import contextlib
from http import HTTPStatus
import os
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


class Emulator:
  """The emulator as a process that can be killed and started again on the same port."""

  def __init__(self, bucket: str, data_dir: pathlib.Path | None = None):
    self.bucket, self.data_dir = bucket, data_dir  # None: in memory.
    self.port = _free_port()
    self.env = environment(self.port)
    self.proc = None

  def start(self, die_on_write: str | None = None):
    """Serves until stopped; with `die_on_write`, until an object name contains it."""
    args = [sys.executable, "-m", "tests.gcs_emulator", "start", "--host=127.0.0.1",
            f"--port={self.port}", f"--default-bucket={self.bucket}", "--quiet"]
    env = dict(os.environ)
    if self.data_dir is None:
      args.append("--in-memory")
    else:
      env["STORAGE_BASE"] = str(self.data_dir)
    if die_on_write:
      env[_DIE_ON_WRITE] = die_on_write
    self.proc = subprocess.Popen(args, cwd=pathlib.Path(__file__).parent.parent, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
      with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
        return
      if self.proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f"the GCS emulator did not start (exit code {self.proc.poll()})")
      time.sleep(0.1)

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=30)


@contextlib.contextmanager
def serve(bucket: str):
  """Runs an in-memory emulator holding `bucket`; yields its environment variables."""
  emulator = Emulator(bucket)
  emulator.start()
  try:
    yield emulator.env
  finally:
    emulator.stop()


_DIE_ON_WRITE = "GCS_EMULATOR_DIE_ON_WRITE"


def _die_on_write(create):
  def handler(storage, bucket_name, file_name, *args, **kwargs):
    if os.environ[_DIE_ON_WRITE] in file_name:
      os._exit(1)  # No answer, no cleanup: as if the store went away mid-request.
    return create(storage, bucket_name, file_name, *args, **kwargs)
  return handler


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
  from gcp_storage_emulator import storage
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
  if os.environ.get(_DIE_ON_WRITE):
    storage.Storage.create_file = _die_on_write(storage.Storage.create_file)
    storage.Storage.create_resumable_upload = _die_on_write(
        storage.Storage.create_resumable_upload)
  emulator.main(sys.argv[1:])


if __name__ == "__main__":
  _main()
