"""What every command shares: exit 0 when done, 2 with one `error:` line for bad input.

    if __name__ == "__main__":
      cli.run(main)                    # or cli.run(main, config_flag="config")

`run` turns `errors.BadInput` (and a missing or unreadable path) into that line; with
`config_flag`, flag parsing does the same for a config file that is missing, does not
compile or has no `get_config`, and for an unknown `--config.x.y` key.
"""

import ast
import sys

from absl import app
from absl import flags

from drope_jax import distributed
from drope_jax import errors

BAD_INPUT = 2
# OS errors that name the path at fault: a message, not a traceback.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def fail(message: str):
  """Prints `error: message` and exits 2, without waiting for peer processes."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  if distributed.is_multiprocess():
    # sys.exit would wait in jax's shutdown barrier for peers that may never arrive.
    distributed.exit_reporting(BAD_INPUT)
  sys.exit(BAD_INPUT)


def run(main, *, config_flag: str | None = None):
  """absl's app.run with the exit convention above."""
  def guarded(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      fail(str(e))
    except (errors.BadInput, *_PATH_ERRORS) as e:
      fail(str(e))

  app.run(guarded, flags_parser=lambda argv: parse_flags(argv, config_flag))


def parse_flags(argv: list[str], config_flag: str | None = None) -> list[str]:
  """absl parsing, with a bad flag, config file or config key reported as one line."""
  if config_flag:
    _check_config_file(argv, config_flag)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError) as e:  # ValueError: a config file refusing its arg.
    lines = [line for line in str(e).splitlines() if line.strip()]
    # ml_collections embeds the config file's traceback: keep what it says, not where.
    fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
  except (AttributeError, KeyError) as e:
    key, hint = _missing_key(e)
    bad = [a.split("=")[0] for a in argv if a.startswith(f"--{config_flag}.") and key in a]
    hint = f" ({hint})" if hint else ""
    fail(f"{bad[0] if bad else key}: no such config key{hint}; every key and its default "
         "is listed in drope_jax/config.py")


def _missing_key(e: Exception) -> tuple[str, str]:
  """The key and suggestion of ml_collections' KeyError("'key'\\nDid you mean ..."), which
  may come wrapped in an AttributeError; str() of a KeyError would escape both."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  key, _, hint = str(e.args[0] if e.args else e).partition("\n")
  return key.strip("\"'"), hint.strip()


def _check_config_file(argv: list[str], config_flag: str):
  """The config file exists, compiles and defines get_config (read, not run: its own
  errors come later, with its argument)."""
  values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{config_flag}=")]
  if not values:
    return  # absl reports the missing flag.
  path = values[-1].split(":", 1)[0]
  usage = f"--{config_flag}={values[-1]}"
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
  except OSError as e:
    fail(f"{usage}: cannot read {path} ({e.strerror}); give a config file such as "
         "configs/tiny.py")
  except SyntaxError as e:
    fail(f"{usage}: {path}:{e.lineno}: {e.msg}; fix the file")
  if not any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
             for node in tree.body):
    fail(f"{usage}: {path} defines no get_config(); a config file defines "
         "get_config(variant) returning a ConfigDict (see configs/tiny.py)")
