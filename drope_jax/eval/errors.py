"""The error every evaluation raises for input it cannot evaluate."""

from drope_jax import errors


class EvalError(errors.BadInput, ValueError):
  """Bad input to the evaluation; the message names it and the fix."""
