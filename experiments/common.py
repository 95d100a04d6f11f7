"""Shared absl flags and the entry-point runner: one-line errors with exit code 2, quiet libraries.

Every entry point in ``experiments/`` calls :func:`run`. Bad input (flag errors, missing
files, malformed data, anything the library reports as ``ValueError``/``OSError``) becomes
one line ``error: ...`` on stderr and exit code 2, never a traceback. :func:`run` also turns on
JAX's persistent compilation cache (``jaxscape.compilation_cache``) before ``main`` compiles
anything: ``--compilation_cache_dir=DIR`` moves it, ``--nocompilation_cache`` turns it off.

Nothing heavy is imported here: ``--help`` and bad flags answer before JAX or transformers load.
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
# No download/loading progress bars (transformers and huggingface_hub read this when imported, so
# transformers need not be imported here just to turn them off).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
DEFAULT_MODEL = "checkpoints/toy-chat"

flags.DEFINE_bool("compilation_cache", True, "keep compiled programs in JAX's persistent compilation cache "
                  "(reused by later runs of the same shapes; safe to share between processes)")
flags.DEFINE_string("compilation_cache_dir", None, "directory of the compilation cache (default: "
                    "$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/jaxscape/xla or ~/.cache/jaxscape/xla)")


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


def setup_compilation_cache() -> str | None:
  """Apply ``--[no]compilation_cache`` / ``--compilation_cache_dir``; returns the cache dir in use (or ``None``).

  Must run before the first compile (:func:`run` calls it before ``main``). An unusable directory
  logs one warning line and the run goes on without the cache.
  """
  from jaxscape import compilation_cache
  if not FLAGS.compilation_cache:
    compilation_cache.disable()
    return None
  return compilation_cache.enable(FLAGS.compilation_cache_dir)


def run(main, *, compiles: bool = True) -> None:
  """``app.run(main)`` with one-line errors for flag parsing and bad input.

  ``compiles``: the entry point runs JAX programs, so the persistent compilation cache is set up
  before ``main`` (``False`` for entry points that never import JAX, e.g. ``experiments.plot``).
  """
  threading.excepthook = _thread_hook

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      if compiles:
        setup_compilation_cache()
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
