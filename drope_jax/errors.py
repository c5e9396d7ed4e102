"""The one error class every command reports as a sentence: bad input.

A config value, a flag, a file or a workdir that cannot work raises a subclass of
`BadInput` whose message names the problem and the fix. Commands print it on one line
and exit 2 (`drope_jax.cli`); anything else is a bug and keeps its traceback.
"""


class BadInput(Exception):
  """Input that cannot work; the message names it and says what to do instead."""
