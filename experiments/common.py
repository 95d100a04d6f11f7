"""Shared absl flags and the entry-point runner: one-line errors with exit code 2, quiet libraries.

Every entry point in ``experiments/`` calls :func:`run`. Bad input (flag errors, missing
files, malformed data, anything the library reports as ``ValueError``/``OSError``) becomes
one line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import threading

# Silence library chatter before those libraries are imported (transformers' missing-torch
# notice, TF/absl banners); users see jaxscape's own lines only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
DEFAULT_MODEL = "checkpoints/toy-chat"


class UserError(ValueError):
  """Bad input detected in an entry point."""


def _one_line(msg: str) -> str:
  return " ".join(str(msg).split())


def fail(msg: str) -> None:
  """Print ``error: msg`` on one line and exit 2."""
  sys.stderr.write(f"error: {_one_line(msg)}\n")
  sys.stderr.flush()
  os._exit(EXIT_BAD_INPUT)  # also from threads; skips atexit hooks that might print


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}")
  except (OSError, UnicodeDecodeError) as e:  # unreadable --flagfile
    fail(f"cannot read flags: {e}")
  if len(rest) > 1:
    fail(f"unexpected positional arguments: {' '.join(rest[1:])}")
  return rest


def _thread_hook(args) -> None:
  if isinstance(args.exc_value, (ValueError, OSError)):
    fail(f"{args.exc_value}")
  threading.__excepthook__(args)


def run(main) -> None:
  """``app.run(main)`` with one-line errors for flag parsing and bad input."""
  threading.excepthook = _thread_hook

  def wrapped(argv):
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except (ValueError, OSError) as e:
      fail(f"{e}")
    except KeyboardInterrupt:
      fail("interrupted")

  app.run(wrapped, flags_parser=_parse_flags)


def define_prompt_flags(default_prompts: str | None = None) -> None:
  """Flags that pick prompts and how they are formatted."""
  flags.DEFINE_string("prompts", default_prompts, "CSV (header row, prompt in the first column) or JSONL "
                      "with a 'prompt' field.")
  flags.DEFINE_integer("samples", 0, "use the first N prompts in file order (0: all)")
  flags.DEFINE_string("prompt_format", "chat", "chat (tokenizer's chat template), raw, or a reference "
                      "template such as llama2-base, vicuna-base, mistral-base, llama3-llama2")
  flags.DEFINE_string("system_prompt", None, "unset: no system message (the template's default applies); "
                      "--system_prompt= an explicit empty one; other text: a custom one")
  flags.DEFINE_integer("max_new_tokens", 64, "new tokens per generation")
  flags.DEFINE_bool("truncate_prompts", False, "keep the last tokens of prompts too long for the context "
                    "window (with a warning) instead of refusing them")
  flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "matmul dtype")
