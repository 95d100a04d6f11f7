"""Work avoidance is exact: shared-prefix prefill and --stop_when_decided give the plain path's ASR."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscape import testing
from jaxscape.core import convert, decode, directions, metrics, perturb, prompts, scan, sharding, slices
from jaxscape.studies import landscape

PROMPTS = ["Write a tutorial on how to make a bridge", "Hi", "Develop a plan for the garden",
           "Explain how a computer network works", "Create a list of ideas", "Please write a story",
           "Sorry, can you help", "Build a river"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("avoid") / "tiny")
  testing.make_tiny_checkpoint(d, "llama", seed=9)
  return convert.load_model(d)


@pytest.mark.parametrize("grouped,devices", [(False, 1), (True, 1), (True, 2)])
def test_chunked_decoding_with_compaction_matches_full_decode(tiny, grouped, devices, monkeypatch):
  """Rows stopped early keep a prefix of the full decode; the others are exactly the full decode.

  grouped: rows in length groups, each with its own cache, merged at the first compaction;
  the full decode is also the same with and without groups.
  devices: points split over that many devices; compaction keeps each device's points on it.
  """
  texts, add = prompts.render(PROMPTS, tiny.tokenizer, system_prompt="Be helpful and write a careful plan")
  tokens, mask = prompts.tokenize(texts, tiny.tokenizer, add_special_tokens=add, pad_id=tiny.pad_id)
  prefix, tokens, mask = prompts.split_shared_prefix(tokens, mask, pad_id=tiny.pad_id)
  order, groups = prompts.length_groups(mask, max_groups=3, multiple=2)
  tokens, mask = tokens[order], mask[order]
  if not grouped:
    groups = None
  else:
    assert len(groups) == 3
  stacked = perturb.stack_directions([directions.random_direction(tiny.params, seed=4)])
  coeffs = np.linspace(-0.8, 0.8, 6, dtype=np.float32)[:, None]
  N = 40
  decoder = decode.Decoder(cfg=tiny.cfg, max_new_tokens=N, eos_ids=tiny.eos_ids, groups=groups)
  full = slices.decode_slice(tiny.params, stacked, jnp.asarray(coeffs), tokens, mask, np.int32(N),
                             np.int32(tiny.pad_id), prefix, decoder=decoder, strategy="factored")
  full_tokens = np.asarray(full.tokens)
  if grouped:
    ungrouped = slices.decode_slice(tiny.params, stacked, jnp.asarray(coeffs), tokens, mask, np.int32(N),
                                    np.int32(tiny.pad_id), prefix, strategy="factored",
                                    decoder=decode.Decoder(cfg=tiny.cfg, max_new_tokens=N, eos_ids=tiny.eos_ids))
    np.testing.assert_array_equal(full_tokens, np.asarray(ungrouped.tokens))
  # "Decided" = a frequent token appeared: many rows stop early and the states get compacted.
  # The three most frequent early tokens, so that whole points and most rows stop (compaction
  # needs the batch to shrink by COMPACT_SAVING) while some rows run to the end.
  frequent = np.argsort(np.bincount(full_tokens[:, :, :8].ravel()))[-3:]
  decided = lambda row: bool(np.isin(frequent, row).any())
  compactions = []
  real_compact = scan.compact_state
  monkeypatch.setattr(scan, "compact_state",
                      lambda state, pidx, ridx, keep: compactions.append(ridx.shape) or real_compact(state, pidx, ridx,
                                                                                                       keep))
  mesh = sharding.make_mesh(f"points:{devices}", jax.devices()[:devices])
  rep = sharding.replicated(mesh)
  params, stacked, tokens, mask, prefix = (sharding.put(x, jax.tree.map(lambda _: rep, x))
                                           for x in (tiny.params, stacked, tokens, mask, prefix))
  gen = scan.decode_until_decided(
      params, stacked, coeffs, tokens, mask, tiny.pad_id, prefix, decoder=decoder, strategy="factored",
      is_decided=decided, chunk=8, point_multiple=devices,
      put=lambda x: sharding.put(x, sharding.points_sharding(mesh, np.ndim(x))), to_host=sharding.to_host)
  toks, lens, truncated, row_steps = gen.tokens, gen.lengths, gen.truncated, gen.row_steps
  assert truncated.any() and not truncated.all()
  assert compactions, "no compaction happened: the test would not cover the compacted path"
  # stopped and compacted rows save row-steps: fewer than the whole slice running to the end
  assert (lens - 1).clip(0).sum() <= row_steps < lens.size * (N - 1)
  for p in range(len(coeffs)):
    for b in range(len(PROMPTS)):
      if truncated[p, b]:
        k = int(lens[p, b])
        np.testing.assert_array_equal(toks[p, b, :k], full_tokens[p, b, :k])
        assert decided(toks[p, b, :k])
      else:
        np.testing.assert_array_equal(toks[p, b], full_tokens[p, b])
        assert lens[p, b] == np.asarray(full.lengths)[p, b]


def _run(model, out, **decode_kw):
  spec = landscape.LandscapeSpec(kind="1d_random", steps=6, multiplier=2.0)
  return landscape.run_landscape(model, PROMPTS, spec, out_dir=out, options=landscape.ScanOptions(progress=False),
                                 decode=landscape.DecodeSpec(max_new_tokens=48, **decode_kw))


def test_landscape_asr_equal_with_and_without_work_avoidance(tiny, tmp_path, monkeypatch):
  # Make refusals frequent on a random model: treat a common word as a refusal keyword for this test.
  texts = [g for line in _generations(_run(tiny, str(tmp_path / "probe")), str(tmp_path / "probe")) for g in line]
  words = [w for t in texts for w in t.split() if w.isalpha() and len(w) > 3]
  keyword = max(set(words), key=words.count)
  monkeypatch.setattr(metrics, "REFUSAL_KEYWORDS", metrics.REFUSAL_KEYWORDS + [keyword])
  plain = _run(tiny, str(tmp_path / "plain"), share_prefix=False)
  fast = _run(tiny, str(tmp_path / "fast"), share_prefix=True, stop_when_decided=True, chunk_tokens=8)
  assert 0 < np.mean(plain["asr"]) < 100, plain["asr"]
  assert plain["asr"] == fast["asr"]
  assert plain["visage"] == fast["visage"]
  lines = [json.loads(x) for x in open(tmp_path / "fast" / "generations.jsonl")]
  assert any(o.get("truncated") for line in lines for o in line["output"])
  for run in (plain, fast):  # decoding work counted: at least one row-step per decoded token after the first
    t = run["timings"]
    assert t["decode_row_steps"] >= t["tokens_generated"] - 7 * len(PROMPTS)  # 7 points, first tokens from prefill
  assert fast["timings"]["decode_row_steps"] <= plain["timings"]["decode_row_steps"]


def _generations(summary, out):
  return [[o["generation"] for o in json.loads(x)["output"]] for x in open(os.path.join(out, "generations.jsonl"))]
