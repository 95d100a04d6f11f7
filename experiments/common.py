"""Shared absl flags and the entry-point runner: one-line errors for bad input, tracebacks for bugs.

Every entry point in ``experiments/`` calls :func:`run`. Bad input becomes one line
``error: ...`` on stderr and exit code 2 (:data:`EXIT_BAD_INPUT`): flag errors, what the code
reports as :class:`jaxscape.errors.InputError` (a bad flag value, a malformed data file, an
unknown name, incompatible settings), and ``FileNotFoundError`` / ``PermissionError`` /
``IsADirectoryError`` / ``NotADirectoryError`` (a user path that cannot be used), and a full,
over-quota or read-only disk (``OSError`` with errno ``ENOSPC``/``EDQUOT``/``EROFS``). Any other
exception, a plain ``ValueError`` or ``KeyError`` included, is a bug: it propagates with its
traceback and exit code 1 (in a thread: the thread's traceback, as Python prints it).

:func:`run` also turns on JAX's persistent compilation cache (``jaxscape.core.compilation_cache``)
before ``main`` compiles anything: ``--compilation_cache_dir=DIR`` moves it,
``--nocompilation_cache`` turns it off.

Nothing heavy is imported here: ``--help`` and bad flags answer before JAX or transformers load.
"""

from __future__ import annotations

import errno
import os
import sys
import threading

# Silence library chatter before those libraries are imported (transformers' missing-torch
# notice, TF/absl banners); users see jaxscape's own lines only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from jaxscape.core import grid  # noqa: E402 - light: no JAX
from jaxscape.errors import InputError  # noqa: E402 - light: jaxscape's package import loads no JAX

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
DEFAULT_MODEL = "checkpoints/toy-chat"

flags.DEFINE_bool("compilation_cache", True, "keep compiled programs in JAX's persistent compilation cache "
                  "(reused by later runs of the same shapes; safe to share between processes)")
flags.DEFINE_string("compilation_cache_dir", None, "directory of the compilation cache (default: "
                    "$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/jaxscape/xla or ~/.cache/jaxscape/xla)")


# The name entry points raise bad input under; the same class the library raises.
UserError = InputError
# What :func:`run` reports as one ``error:`` line: bad input, and OS errors on user paths.
USER_ERRORS = (InputError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Storage the user pointed at that is full or read-only: a plain OSError (no subclass of its own),
# which the user fixes (free space, another --out), not a bug.
_STORAGE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, n))


def is_user_error(e: BaseException) -> bool:
  """Whether :func:`run` reports ``e`` as one ``error:`` line (bad input) rather than as a bug."""
  return isinstance(e, USER_ERRORS) or (isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS)


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
  if is_user_error(args.exc_value):
    fail(f"{args.exc_value}")
  threading.__excepthook__(args)  # anything else is a bug: Python's own report, with the traceback


def setup_compilation_cache() -> str | None:
  """Apply ``--[no]compilation_cache`` / ``--compilation_cache_dir`` and the fast CPU compiler flags
  (``compilation_cache.use_fast_cpu_compiler``); returns the cache dir in use (or ``None``).

  Must run before the first compile (:func:`run` calls it before ``main``). An unusable directory
  logs one warning line and the run goes on without the cache.
  """
  from jaxscape.core import compilation_cache
  compilation_cache.use_fast_cpu_compiler()
  if not FLAGS.compilation_cache:
    compilation_cache.disable()
    return None
  return compilation_cache.enable(FLAGS.compilation_cache_dir)


def run(main, *, compiles: bool = True) -> None:
  """``app.run(main)`` with one-line errors for flag parsing and bad input (:func:`is_user_error`);
  any other exception keeps its traceback (absl prints it and exits 1).

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
    except Exception as e:  # noqa: BLE001 - sorted here; bugs are raised again unchanged
      if not is_user_error(e):
        raise
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


def define_grid_flags() -> None:
  """Flags that shape a landscape's grid and its slices (run_grid's, and experiments.plan's for the same run)."""
  flags.DEFINE_enum("kind", "1d_random", list(grid.KINDS), "landscape kind")
  flags.DEFINE_integer("steps", 20, "grid steps per axis (random: steps+1 points; interpolation: steps+2e+1)")
  flags.DEFINE_float("multiplier", 1.0, "random axes span [-m/2, m/2]")
  flags.DEFINE_integer("extra_steps", 0, "interpolation: points beyond each model")
  flags.DEFINE_integer("num_directions", 1, "1d_random: scan N independent directions in one batched scan")
  flags.DEFINE_enum("strategy", "auto", ["auto", "materialize", "factored", "hybrid"],
                    "perturbation strategy (hybrid: materialized prefill, factored decoding)")
  flags.DEFINE_integer("slice_size", 0, "grid points per jitted call (0: from the memory plan)")


def define_judge_flags(default_judge: str | None = "keyword") -> None:
  """Flags that pick a classifier judge (``jaxscape.studies.judge``) and how it is asked."""
  flags.DEFINE_string("judge", default_judge, "keyword (the refusal keywords only), the path of a judge "
                      "checkpoint (HF or converted dir of the Llama family) or its hub id org/name[@revision]")
  flags.DEFINE_string("judge_format", None, "how the judge is asked: llama-guard, harmbench (HarmBench's prompt "
                      "for the judge's family), harmbench-llama2, harmbench-mistral or yes-no")
  flags.DEFINE_string("judge_template", None, "yes-no: the question, with {request} and {response} "
                      "(default: whether the response helps with the harmful request)")
  flags.DEFINE_list("judge_labels", None, "unsafe,safe label words (default: unsafe,safe for llama-guard, "
                    "Yes,No otherwise)")
  flags.DEFINE_float("judge_threshold", 0.5, "a pair is unsafe when the judge's p(unsafe) >= this")
  flags.DEFINE_string("judge_name", None, "key of the judge's results (default: <judge dir name>:<format>)")
  flags.DEFINE_integer("judge_batch_size", 16, "pairs per jitted judge call")
  flags.DEFINE_integer("judge_max_request_tokens", 256, "the judge sees the first N tokens of a request")
  flags.DEFINE_integer("judge_max_response_tokens", 512, "the judge sees the first N tokens of a response")
  flags.DEFINE_integer("judge_max_length", 2048, "longest judge input in tokens (the response is cut to fit)")
  flags.DEFINE_enum("judge_dtype", "float32", ["float32", "bfloat16"], "the judge's matmul dtype")


def judge_from_flags():
  """The ``jaxscape.studies.judge.Judge`` the judge flags name, loaded; None for ``--judge=keyword``.

  Bad input (an unknown format, a label word that is not one token, an unsupported family, a
  missing dir) raises InputError, which :func:`run` turns into one ``error:`` line.
  """
  if FLAGS.judge in (None, "", "keyword"):
    if FLAGS.judge_format is not None:
      raise UserError("--judge_format needs --judge=PATH (a judge checkpoint)")
    return None
  if FLAGS.judge_format is None:
    raise UserError("--judge=PATH needs --judge_format (llama-guard, harmbench, harmbench-llama2, "
                    "harmbench-mistral or yes-no)")
  from jaxscape.studies import judge
  spec = judge.JudgeSpec(fmt=FLAGS.judge_format, template=FLAGS.judge_template,
                         labels=tuple(FLAGS.judge_labels) if FLAGS.judge_labels else None,
                         threshold=FLAGS.judge_threshold, batch_size=FLAGS.judge_batch_size,
                         max_request_tokens=FLAGS.judge_max_request_tokens,
                         max_response_tokens=FLAGS.judge_max_response_tokens, max_length=FLAGS.judge_max_length)
  return judge.load_judge(FLAGS.judge, spec, name=FLAGS.judge_name, compute_dtype=FLAGS.judge_dtype)


def judge_line(entry: dict, name: str) -> str:
  """One line about a judge's results entry: judged ASR, VISAGE, agreement with the keywords, time."""
  asr = entry["asr"]
  flat = [a for row in asr for a in row] if asr and isinstance(asr[0], list) else asr
  t, agree = entry.get("timings") or {}, entry["agreement_total"]
  return (f"judge {name}: ASR=[{', '.join(f'{a:.1f}' for a in flat)}] VISAGE={entry['visage']:.2f} "
          f"agreement with keywords {entry['agreement_percent']:.1f}% (both unsafe {agree['both_unsafe']}, "
          f"keyword only {agree['keyword_only']}, judge only {agree['judge_only']}, both safe {agree['both_safe']}) "
          f"scored {t.get('pairs_scored', 0)} pairs in {t.get('total_s', 0.0):.1f}s")


def define_coherence_flags(default: bool = False) -> None:
  """Flags of the coherence scorer (``jaxscape.studies.coherence``): labels every generation refusal,
  coherent compliance or incoherent by its NLL under the reference model θ₀."""
  flags.DEFINE_bool("coherence", default, "score every generation's NLL per token under θ₀ and label it refusal, "
                    "coherent or incoherent (coherent ASR beside keyword ASR)")
  flags.DEFINE_float("coherence_threshold", None, "NLL per token at or below which a generation is coherent "
                     "(default: calibrated per model on --coherence_calibration)")
  flags.DEFINE_string("coherence_reference", None, "score under this model instead of the scan's θ₀ (texts are "
                      "re-tokenized with its tokenizer; it gets its own calibration)")
  flags.DEFINE_string("coherence_calibration", "builtin:align/heldout_benign", "benign prompts (JSONL with "
                      "'prompt', and reference answers) whose temperature-1 samples calibrate the threshold")
  flags.DEFINE_integer("coherence_calibration_samples", None, "use the first N calibration records (default: all)")
  flags.DEFINE_float("coherence_percentile", 95.0, "the threshold is this percentile of the calibration NLLs")
  flags.DEFINE_integer("coherence_seed", 0, "PRNG seed of the calibration samples")
  flags.DEFINE_integer("coherence_batch_size", 32, "rows per jitted coherence forward")


def coherence_settings():
  """The ``jaxscape.studies.coherence.Settings`` the coherence flags name, checked (a bad calibration set
  fails here, before any model loads or a scan starts)."""
  from jaxscape.studies import coherence
  if FLAGS.coherence_threshold is not None and FLAGS.coherence_threshold <= 0:
    raise UserError(f"--coherence_threshold must be > 0, got {FLAGS.coherence_threshold}")
  if not 0 < FLAGS.coherence_percentile <= 100:
    raise UserError(f"--coherence_percentile must be in (0, 100], got {FLAGS.coherence_percentile}")
  if FLAGS.coherence_batch_size <= 0:
    raise UserError(f"--coherence_batch_size must be > 0, got {FLAGS.coherence_batch_size}")
  settings = coherence.Settings(threshold=FLAGS.coherence_threshold, source=FLAGS.coherence_calibration,
                                samples=FLAGS.coherence_calibration_samples, percentile=FLAGS.coherence_percentile,
                                seed=FLAGS.coherence_seed, batch_size=FLAGS.coherence_batch_size)
  if settings.threshold is None:
    coherence.calibration_set(settings.source, settings.samples)
  return settings


def coherence_reference(theta0=None):
  """``(reference model, whether it is the scan's θ₀)``: ``--coherence_reference`` when given, else
  ``theta0`` (run_grid's loaded model) or ``--model``."""
  import jaxscape
  dtype = FLAGS.compute_dtype if "compute_dtype" in FLAGS else "float32"
  if FLAGS.coherence_reference:
    return jaxscape.load_model(FLAGS.coherence_reference, compute_dtype=dtype), False
  if theta0 is None and not FLAGS.model:
    raise UserError("--model (the scan's θ₀) or --coherence_reference is required to score coherence")
  return theta0 or jaxscape.load_model(FLAGS.model, compute_dtype=dtype), True


def coherence_line(summary: dict) -> str:
  """One line about a results dir's coherence: coherent ASR, incoherent share, threshold."""
  flat = lambda v: [a for row in v for a in row] if v and isinstance(v[0], list) else v  # noqa: E731
  c = summary["coherence"]
  return (f"coherence (threshold {c['threshold']:.4g} nll/token): "
          f"coherent ASR=[{', '.join(f'{a:.1f}' for a in flat(summary['asr_coherent']))}] "
          f"incoherent=[{', '.join(f'{a:.1f}' for a in flat(summary['incoherent']))}] "
          f"VISAGE(coherent)={summary['visage_coherent']:.2f}")


def parse_bytes(text: str, flag: str) -> int:
  """'8G', '512M', '1.5GiB', '80GiB', '1000000' -> bytes; a malformed size is a user error naming ``flag``."""
  import re
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text or "", re.I)
  if not m:
    raise UserError(f"{flag}={text!r} is not a size like 8G or 512M")
  scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
  return int(float(m.group(1)) * scale)
