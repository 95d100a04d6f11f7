"""Models named by hub id: ``org/name[@revision]`` -> a local snapshot dir.

Every place that takes a model path (``jaxscape.load_model``, ``--model``, ``--model_b``,
``--model_c``, ``--judge``, ``--hf_dir``) also takes a Hugging Face hub id such as
``meta-llama/Llama-2-7b-chat-hf`` or ``org/name@v1.0`` (a branch, tag or commit). :func:`resolve`
turns one into the dir of its snapshot in the hub cache, downloading what is missing with
``huggingface_hub.snapshot_download``:

* an existing local path always wins: ``checkpoints/toy-chat`` stays a dir even though it has the
  shape of an id;
* only what jaxscape reads is fetched: ``config.json``, ``generation_config.json``, the tokenizer
  files (:data:`META_FILES`) and the safetensors weights, i.e. ``model.safetensors`` or the shards
  that ``model.safetensors.index.json`` names. Pickled weights (``*.bin``, ``*.pt``) are never
  fetched nor loaded, and other ``*.safetensors`` files (e.g. Mistral's ``consolidated.safetensors``,
  a second copy of the weights) are not fetched;
* huggingface_hub's own settings apply: ``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache is),
  ``HF_TOKEN`` (gated and private repos), ``HF_HUB_OFFLINE=1`` (the cache only, no network),
  ``HF_ENDPOINT``; downloads show its progress bars on a terminal.

Whatever goes wrong is one :class:`jaxscape.errors.InputError` line that says what to do: an id
that is neither a local path nor in the cache while offline (the message names both readings), a
repo without safetensors weights, a gated or missing repo, an unknown revision.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re

from jaxscape.errors import InputError

# Fetched in a first pass; the weights (model.safetensors, or the shards the index names) in a second.
META_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# One part of a repo id as the hub accepts it (huggingface_hub.utils.validate_repo_id): word
# characters, '.' and '-', starting and ending with a word character, at most 96 long.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_ID = re.compile(rf"({_PART}/{_PART})(?:@(.+))?")


def parse(name: str) -> tuple[str, str | None] | None:
  """``(repo_id, revision or None)`` when ``name`` has the shape ``org/name[@revision]``, else None.

  Shape only: ``checkpoints/toy-chat`` parses too; :func:`resolve` lets a local path win.
  """
  m = _ID.fullmatch(name or "")
  if m is None or "--" in m.group(1) or ".." in m.group(1):  # the hub refuses these in ids
    return None
  return m.group(1), m.group(2)


def is_hub_id(name: str) -> bool:
  """Whether :func:`resolve` reads ``name`` as a hub id (the shape of one, and no such local path)."""
  return not os.path.exists(name) and parse(name) is not None


def snapshot_repo(path: str) -> str | None:
  """``org/name`` when ``path`` is a snapshot dir of the hub cache (``.../models--org--name/snapshots/<commit>``),
  else None: a name for what a snapshot dir holds (its own name is a commit hash)."""
  parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
  if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
    return None
  repo = parts[-3][len("models--"):].replace("--", "/")  # ids hold no "--" (see parse)
  return repo if parse(repo) is not None else None


def resolve(name_or_path: str) -> str:
  """The local path ``name_or_path`` names: itself when it exists or is not shaped like a hub id
  (callers report a missing path), else the hub snapshot dir of ``org/name[@revision]``.

  Downloads what the cache lacks (unless ``HF_HUB_OFFLINE=1``) and checks that the snapshot holds
  safetensors weights. Raises :class:`InputError` with one line for every failure.
  """
  if not is_hub_id(name_or_path):
    return name_or_path
  repo_id, revision = parse(name_or_path)
  path = _download(name_or_path, repo_id, revision, list(META_FILES))
  index = os.path.join(path, SAFETENSORS_INDEX)
  # The weights jaxscape reads (jaxscape.core.convert: the index's shards, else model.safetensors), in a
  # second pass: a repo holding both would otherwise download its weights twice.
  weights = _shards(name_or_path, index) if os.path.isfile(index) else [SAFETENSORS]
  missing = [f for f in weights if not os.path.isfile(os.path.join(path, f))]
  if missing:  # pinned to the first pass's commit, so both passes read one snapshot
    path = _download(name_or_path, repo_id, os.path.basename(os.path.normpath(path)), missing, quiet=True)
    missing = [f for f in weights if not os.path.isfile(os.path.join(path, f))]
  if missing and weights == [SAFETENSORS]:
    raise InputError(f"hub repo {name_or_path} has no safetensors weights ({SAFETENSORS} or {SAFETENSORS_INDEX}"
                     f"{' in the hub cache, offline' if _offline() else ''}); jaxscape never loads pickled "
                     "*.bin / *.pt weights: pick a repo or revision with safetensors")
  if missing:
    raise InputError(f"hub repo {name_or_path}: the snapshot {path} lacks {len(missing)} weight file(s) that "
                     f"{SAFETENSORS_INDEX} names ({', '.join(missing[:3])}); {_complete_hint()}")
  return path


def _shards(name: str, index: str) -> list[str]:
  """The weight files ``index`` names; plain ``*.safetensors`` file names only, since they become
  download patterns and paths (a ``*`` or ``../`` would fetch or read something else)."""
  try:
    with open(index, encoding="utf-8") as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise InputError(f"hub repo {name}: unreadable {SAFETENSORS_INDEX} ({type(e).__name__}: {e})") from None
  bad = [f for f in files if not re.fullmatch(r"[\w.-]+\.safetensors", str(f))]
  if bad or not files:
    raise InputError(f"hub repo {name}: {SAFETENSORS_INDEX} names no weight files or odd ones ({bad[:3]}); "
                     "jaxscape loads *.safetensors shards only")
  return files


def _offline() -> bool:
  from huggingface_hub import constants
  return bool(constants.HF_HUB_OFFLINE)


def _complete_hint() -> str:
  return ("run again without HF_HUB_OFFLINE=1 to download them" if _offline()
          else "download them again (the hub repo may be incomplete)")


def _download(name: str, repo_id: str, revision: str | None, patterns: list[str], *, quiet: bool = False) -> str:
  """``snapshot_download`` with its errors as one-line :class:`InputError`s about ``name``.

  ``quiet``: no "No files matched" warning (resolve reports missing weights itself, in one line).
  """
  from huggingface_hub import constants, get_token, snapshot_download
  from huggingface_hub import errors as hf_errors

  log = logging.getLogger("huggingface_hub._snapshot_download")
  level = log.level
  if quiet:
    log.setLevel(logging.ERROR)  # its progress bars stay: they are off only at NOTSET
  # token, cache dir, offline mode and endpoint are left to huggingface_hub, which reads HF_TOKEN,
  # HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT; passing any of them would override those.
  try:
    return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, tqdm_class=_terminal_bars())
  except hf_errors.GatedRepoError:  # before RepositoryNotFoundError, its base class
    page = f"{constants.ENDPOINT}/{repo_id}"
    if get_token() is None:
      msg = (f"hub repo {repo_id} is gated: accept its terms at {page}, then set HF_TOKEN to a token of that "
             "account (or run `hf auth login`)")
    else:
      msg = (f"hub repo {repo_id} is gated and the token in use (HF_TOKEN or `hf auth login`) has no access: "
             f"accept its terms at {page} with that account")
    raise InputError(msg) from None
  except hf_errors.RepositoryNotFoundError:
    raise InputError(f"no such dir {name}, and no repo {repo_id} on the hub ({constants.ENDPOINT}); a private "
                     "repo needs HF_TOKEN set to a token with access") from None
  except hf_errors.RevisionNotFoundError:
    raise InputError(f"hub repo {repo_id} has no revision {revision!r} (a branch, tag or commit)") from None
  except hf_errors.LocalEntryNotFoundError as e:  # also IncompleteSnapshotError, its subclass
    if type(e).__name__ == "IncompleteSnapshotError":
      where = getattr(e, "snapshot_path", None) or "in the hub cache"
      raise InputError(f"hub repo {name}: the cached snapshot {where} misses files; {_complete_hint()}") from None
    cache = constants.HF_HUB_CACHE
    rev = f" at revision {revision}" if revision else ""
    if _offline() or isinstance(e.__cause__, hf_errors.OfflineModeIsEnabled):
      raise InputError(f"no such dir {name}, and no repo {repo_id}{rev} in the hub cache {cache} (offline: "
                       "HF_HUB_OFFLINE=1; unset it to download)") from None
    cause = e.__cause__ if e.__cause__ is not None else e
    raise InputError(f"no such dir {name}, and repo {repo_id}{rev} is not in the hub cache {cache} and the hub "
                     f"could not be reached ({type(cause).__name__}: {_first_line(cause)}); check the network "
                     "or HF_ENDPOINT") from None
  except hf_errors.HfHubHTTPError as e:
    raise InputError(f"hub repo {repo_id}: the hub answered {_first_line(e)}") from None
  except hf_errors.HFValidationError as e:
    raise InputError(f"no such dir {name}, and it is not a valid hub id ({_first_line(e)})") from None
  finally:
    log.setLevel(level)


@functools.cache
def _terminal_bars() -> type:
  """huggingface_hub's progress bar class, drawn on a terminal only.

  snapshot_download's "Fetching N files" bar draws on any stream; in a log or a pipe its
  carriage-return lines would bury the one ``error:`` line. Still off with HF_HUB_DISABLE_PROGRESS_BARS.
  """
  from huggingface_hub.utils import tqdm

  class TerminalBars(tqdm):
    def __init__(self, *args, **kwargs):
      kwargs.setdefault("disable", None)  # tqdm: None = off unless the stream is a terminal
      super().__init__(*args, **kwargs)

  return TerminalBars


def _first_line(e: BaseException) -> str:
  lines = [s for s in str(e).splitlines() if s.strip()]
  return lines[0] if lines else type(e).__name__
