"""User errors apart from bugs: bad input is one ``error:`` line with exit 2, a bug keeps its traceback.

Entry points run as subprocesses (``experiments.common.run`` decides what the user sees); the
library's parsers are checked in-process to raise ``InputError`` naming the file.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxscape.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "checkpoints", "toy-chat")


def _env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, "--nocompilation_cache", *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=300)


def _run_code(code):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=300)


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  for f in fragments:
    assert f in lines[0], lines[0]


def _assert_traceback(proc, *fragments):
  assert proc.returncode not in (0, 2), (proc.returncode, proc.stderr)
  assert "Traceback" in proc.stderr, proc.stderr
  assert "error: " not in proc.stderr.splitlines()[-1], proc.stderr
  for f in fragments:
    assert f in proc.stderr, proc.stderr


# Runs ENTRY's main through common.run with jaxscape.MODULE.FUNCTION replaced by one that raises EXC.
_PLANT = """
    import sys
    from jaxscape import {module}

    def planted(*args, **kwargs):
      raise {exc}

    {module}.{function} = planted
    from experiments import common, {entry}
    sys.argv = ["{entry}", "--nocompilation_cache", {argv}]
    common.run({entry}.main)
"""


# ------------------------------------------------------------------ user errors: one line, exit 2


def _write(path, data):
  (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
  return str(path)


@pytest.mark.parametrize("name,content,args,fragments", [
    ("p.jsonl", '{"prompt": "Hi"}\nnot json\n', [], ["p.jsonl:2", "prompt"]),
    ("p.jsonl", '{"text": "Hi"}\n', [], ["p.jsonl:1", "prompt"]),
    ("p.jsonl", b'{"prompt": "caf\xe9"}\n', [], ["p.jsonl", "UTF-8"]),
    ("p.csv", "goal\n", [], ["holds no prompts"]),
    ("p.jsonl", '{"prompt": "Hi"}\n', ["--samples=-1"], ["samples"]),
    ("p.jsonl", '{"prompt": "Hi"}\n', ["--prompt_format=bogus"], ["bogus", "prompt_format"]),
])
def test_generate_bad_prompts_is_one_line(tmp_path, name, content, args, fragments):
  prompts = _write(tmp_path / name, content)
  proc = _run("experiments.generate", f"--model={TOY}", f"--prompts={prompts}", f"--out={tmp_path / 'o.jsonl'}",
              "--max_new_tokens=2", *args)
  _assert_one_line_error(proc, *fragments)
  assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("config,fragments", [
    ("{", ["config.json", "unreadable config"]),
    ("[1, 2]", ["config.json", "JSON object"]),
    (json.dumps({"model_type": "llama"}), ["config.json", "missing key"]),
    (json.dumps({"model_type": "gpt2"}), ["config.json", "unsupported model_type"]),
])
def test_generate_bad_model_config_is_one_line(tmp_path, config, fragments):
  model = tmp_path / "model"
  model.mkdir()
  _write(model / "config.json", config)
  prompts = _write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
  proc = _run("experiments.generate", f"--model={model}", f"--prompts={prompts}", f"--out={tmp_path / 'o.jsonl'}")
  _assert_one_line_error(proc, *fragments)


def test_generate_missing_model_dir_is_one_line(tmp_path):
  prompts = _write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
  proc = _run("experiments.generate", f"--model={tmp_path / 'nope'}", f"--prompts={prompts}",
              f"--out={tmp_path / 'o.jsonl'}")
  _assert_one_line_error(proc, "does not exist")


def test_os_error_on_a_user_path_is_one_line(tmp_path):
  """An OS error on a user path (here: --out below a regular file) is bad input too."""
  _write(tmp_path / "file", "")
  proc = _run("experiments.convert", f"--hf_dir={TOY}", f"--out={tmp_path / 'file' / 'out'}")
  _assert_one_line_error(proc, "Not a directory")


@pytest.mark.parametrize("content,fragments", [
    ('{"messages": [{"role": "user", "content": "Hi"}]}\n', ["d.jsonl:1", "no assistant message"]),
    ('{"prompt": "Hi", "response": "Hello"}\n{oops\n', ["d.jsonl:2", "not valid JSON"]),
    (b'{"prompt": "\xff"}\n', ["d.jsonl", "UTF-8"]),
])
def test_finetune_bad_data_is_one_line(tmp_path, content, fragments):
  data = _write(tmp_path / "d.jsonl", content)
  proc = _run("experiments.finetune", f"--model={TOY}", f"--data={data}", f"--out={tmp_path / 'out'}")
  _assert_one_line_error(proc, *fragments)


def test_convert_corrupt_gguf_is_one_line(tmp_path):
  gguf = _write(tmp_path / "m.gguf", b"GGUF\x03\x00\x00\x00garbage")
  proc = _run("experiments.convert", f"--gguf={gguf}", f"--out={tmp_path / 'out'}")
  _assert_one_line_error(proc, "m.gguf", "corrupt or truncated GGUF")


def test_train_toy_bad_sizes_are_one_line(tmp_path):
  proc = _run("experiments.train_toy", f"--out={tmp_path / 'toy'}", "--num_heads=12")
  _assert_one_line_error(proc, "num_heads", "multiple of 8")


def test_input_error_in_a_thread_is_one_line():
  proc = _run_code("""
      import sys, threading
      from experiments import common
      from jaxscape.errors import InputError

      def main(argv):
        def work():
          raise InputError("bad value from a worker")
        t = threading.Thread(target=work)
        t.start()
        t.join()

      sys.argv = ["prog", "--nocompilation_cache"]
      common.run(main, compiles=False)
  """)
  _assert_one_line_error(proc, "bad value from a worker")


def test_full_disk_is_one_line(tmp_path):
  """A full or read-only disk under a user path is no bug: one line (a plain OSError, no subclass of its own)."""
  prompts = _write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
  proc = _run_code(_PLANT.format(module="sources", function="load_prompt_file",
                                 exc='OSError(28, "No space left on device")', entry="generate",
                                 argv=f'"--prompts={prompts}", "--out={tmp_path / "o.jsonl"}"'))
  _assert_one_line_error(proc, "No space left on device")


def test_user_error_is_input_error():
  from experiments import common
  assert common.UserError is InputError and issubclass(InputError, ValueError)


# ------------------------------------------------------------------ bugs: a traceback, exit != 2


@pytest.mark.parametrize("exc", ['ValueError("planted bug")', 'KeyError("planted bug")',
                                 'OSError("planted bug")', 'TypeError("planted bug")'])
def test_planted_bug_in_generate_shows_traceback(tmp_path, exc):
  prompts = _write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
  proc = _run_code(_PLANT.format(module="sources", function="load_prompt_file", exc=exc, entry="generate",
                                 argv=f'"--prompts={prompts}", "--out={tmp_path / "o.jsonl"}"'))
  _assert_traceback(proc, "planted bug", "planted")
  assert not (tmp_path / "o.jsonl").exists()


def test_planted_bug_in_model_loading_shows_traceback(tmp_path):
  """A bug past the flag checks (while loading the model) is not reported as bad input either."""
  prompts = _write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
  proc = _run_code(_PLANT.format(module="convert", function="load_model", exc='ValueError("planted bug")',
                                 entry="generate", argv=f'"--prompts={prompts}", "--out={tmp_path / "o.jsonl"}"'))
  _assert_traceback(proc, "planted bug")


def test_planted_bug_in_finetune_data_loading_shows_traceback(tmp_path):
  data = _write(tmp_path / "d.jsonl", '{"prompt": "Hi", "response": "Hello"}\n')
  proc = _run_code(_PLANT.format(module="chat_data", function="load_chat_records", exc='KeyError("planted bug")',
                                 entry="finetune", argv=f'"--data={data}", "--out={tmp_path / "out"}"'))
  _assert_traceback(proc, "planted bug")


# ------------------------------------------------------------------ parsers name the file


def test_read_config_names_the_file(tmp_path):
  from jaxscape.core import convert
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": "x",
                                                    "hidden_size": 8, "vocab_size": 8, "intermediate_size": 8,
                                                    "num_hidden_layers": 1}))
  with pytest.raises(InputError, match="config.json"):
    convert.read_config(str(tmp_path))


def test_converted_dir_whose_config_was_edited_is_input_error(tmp_path):
  """orbax restores whatever shapes were saved: a config.json that no longer matches is refused."""
  from jaxscape.core import convert
  out = convert.convert(TOY, str(tmp_path / "toy"))
  path = os.path.join(out, "config.json")
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({**cfg, "intermediate_size": cfg["intermediate_size"] // 2}, f)
  with pytest.raises(InputError, match="do not match config.json"):
    convert.load_model(out)


def test_bad_safetensors_index_names_the_file(tmp_path):
  from jaxscape.core import convert
  (tmp_path / convert.SAFETENSORS_INDEX).write_text('{"metadata": {}}')
  with pytest.raises(InputError, match="index.json.*weight_map"):
    convert.SafetensorsReader(str(tmp_path))


def test_bad_generation_config_names_the_file(tmp_path):
  from jaxscape.core import convert
  (tmp_path / "generation_config.json").write_text('{"eos_token_id": "two"}')
  with pytest.raises(InputError, match="generation_config.json"):
    convert.eos_ids_of(str(tmp_path))


@pytest.mark.parametrize("manifest,fragment", [
    ("{", "not valid JSON"),
    (json.dumps({"format": "jaxscape.core.directions", "version": 1}), "not a jaxscape directions manifest"),
    (json.dumps({"format": "jaxscape.core.directions", "version": 1, "directions": [{"kind": "random"}]}),
     "direction 0: bad random recipe"),
    (json.dumps({"format": "jaxscape.core.directions", "version": 1, "directions": [{"kind": "interpolation"}]}),
     "names no orbax checkpoint"),
    (json.dumps({"format": "jaxscape.core.directions", "version": 1, "directions": [{"kind": "x"}]}), "unknown kind"),
])
def test_bad_directions_manifest_names_the_file(tmp_path, manifest, fragment):
  from jaxscape.core import direction_store
  (tmp_path / direction_store.MANIFEST).write_text(manifest)
  with pytest.raises(InputError, match=fragment):
    direction_store.load_directions(str(tmp_path), {"w": __import__("numpy").zeros(2)})


def test_non_utf8_jsonl_names_the_file(tmp_path):
  from jaxscape.datasets import sources
  path = tmp_path / "r.jsonl"
  path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
  with pytest.raises(InputError, match="r.jsonl.*UTF-8"):
    sources.load_jsonl(str(path))


def test_chat_template_refusal_is_input_error():
  from jaxscape.core import convert, prompts
  from jaxscape.studies import chat_data
  tok = convert.load_tokenizer(TOY)  # its template raises on a role other than system/user/assistant
  with pytest.raises(InputError, match="chat template"):
    chat_data.encode_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                {"role": "system", "content": "late"}])
  texts, _ = prompts.render(["Hi"], tok, system_prompt="Be brief.")
  assert "Be brief." in texts[0]
