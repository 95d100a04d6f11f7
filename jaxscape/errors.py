"""The one exception type for bad input.

Library code raises :class:`InputError` wherever it rejects what a user gave it (a flag value,
a file's contents, an incompatible results dir). Entry points (``experiments.common.run``) turn
exactly these, file-not-found / permission / (not-)a-directory errors on user paths and a full or
read-only disk, into one ``error:`` line with exit code 2; any other exception is a bug and shows
its traceback.
"""


class InputError(ValueError):
  """Bad input from the user: a one-line message that says what to change."""
