"""A self-contained interactive ``report.html`` for a results dir: a scan, a study or a findings dir.

  path = jaxscape.reports.htmlreport.write_report("results/toy_1d_random")   # open it in any browser

A scan's page draws its landscape as inline SVG (1-D curves, 2-D heatmap); clicking a point lists
that point's generations with their keyword refusal mark and judges' marks. A study's page holds
its table, a findings dir's page its findings; both link the report of every landscape they used.
Pages load nothing from the network: styles, script, data and plots are all inside the file.

This module picks the page for a dir and writes it, and renders the study and findings pages (which
write the reports they link); the scan's page is ``jaxscape.reports.scanpage``, the shell and helpers
every page shares ``jaxscape.reports.htmlpage``.
"""

from __future__ import annotations

import os

from jaxscape.core import results
from jaxscape.errors import InputError
from jaxscape.reports.htmlpage import esc, fmt, href, inline_code, page_html, png_img, value_html
from jaxscape.reports.scanpage import render_scan

REPORT = "report.html"
SUMMARY, TABLE, FINDINGS = results.SUMMARY_FILE, "table.json", "findings.json"
_VERDICT_CLASS = {"reproduced": "ok", "partly": "partly", "not reproduced": "bad"}


def kind_of(results_dir: str) -> str | None:
  """"findings", "study" or "scan" for the files ``results_dir`` holds, None for none of these."""
  for kind, name in (("findings", FINDINGS), ("study", TABLE), ("scan", SUMMARY)):
    if os.path.isfile(os.path.join(results_dir, name)):
      return kind
  return None


def write_report(results_dir: str) -> str:
  """Write ``results_dir/report.html`` (atomically) and return its path.

  A findings dir (``findings.json``) and a study dir (``table.json``) also get the reports of the
  results dirs they link, where those are missing.

  Raises:
    InputError: ``results_dir`` holds none of findings.json, table.json, summary.json.
  """
  kind = kind_of(results_dir)
  if kind is None:
    raise InputError(f"{results_dir} holds no {SUMMARY} (scan), {TABLE} (study) or {FINDINGS} (findings dir)")
  render = {"scan": render_scan, "study": render_study, "findings": render_findings}[kind]
  page = render(results_dir)
  path = os.path.join(results_dir, REPORT)
  results.atomic_write_text(path, page)
  return path


def _linked_report(from_dir: str, target: str, label: str) -> str:
  """A relative link to ``target``'s report.html, written first when missing ('' for no results there)."""
  if kind_of(target) is None:
    return ""
  if not os.path.isfile(os.path.join(target, REPORT)):
    write_report(target)
  return f'<a href="{href(from_dir, os.path.join(target, REPORT))}">{esc(label)}</a>'


# ----------------------------------------------------------------- studies and findings


def render_study(results_dir: str) -> str:
  """The HTML page of a study dir (table.json): its table, findings, plots and landscape links."""
  table = results.read_json(os.path.join(results_dir, TABLE))
  rows = table.get("rows") or []
  from jaxscape.datasets import toydata
  found = dict.fromkeys(f for r in rows for f in (r.get("framed_asr") or {}))  # JSON sorted them
  framings = [f for f in toydata.FRAMINGS if f in found] + [f for f in found if f not in toydata.FRAMINGS]
  tasks = list(dict.fromkeys(t for r in rows for t in (r.get("task_accuracy") or {})))
  jname = (table.get("judge") or {}).get("name")
  head = (["run", "records"] + [f"ASR {f}" for f in framings] + [f"task {t}" for t in tasks]
          + ([f"judged ASR {f}" for f in framings] + ["judged VISAGE"] if jname else [])
          + ["VISAGE", "interp. ASR at b", "landscapes"])
  num = lambda v, extra="": f'<td class="num">{"-" if v is None else f"{v:.1f}"}{extra}</td>'  # noqa: E731
  out = []
  for r in rows:
    seeds = r.get("framed_asr_per_seed") or {}
    records = (r.get("finetune") or {}).get("records")
    cells = [f"<td><code>{esc(r.get('run'))}</code></td>", f'<td class="num">{"-" if records is None else records}</td>']
    for f in framings:
      per = " / ".join(f"{s[f]:.0f}" for s in seeds.values() if f in s)
      cells.append(num((r.get("framed_asr") or {}).get(f),
                       f' <span class="seeds" title="per seed ({esc(", ".join(seeds))})">({per})</span>' if per else ""))
    cells += [num((r.get("task_accuracy") or {}).get(t)) for t in tasks]
    if jname:
      j = (r.get("judges") or {}).get(jname) or {}
      cells += [num((j.get("framed_asr") or {}).get(f)) for f in framings] + [num(j.get("visage"))]
    interp = r.get("interp_1d") or {}
    at_b = None
    if interp.get("coords"):
      xs = [c[0] if isinstance(c, list) else c for c in interp["coords"]]
      at_b = interp["asr"][min(range(len(xs)), key=lambda i: abs(xs[i] - 1.0))]
    run_dir = os.path.join(results_dir, "runs", results.slug(str(r.get("run"))))
    links = [_linked_report(results_dir, os.path.join(run_dir, sub), label)
             for sub, label in (("random_1d", "random 1-D"), ("interp_1d", "interpolation 1-D"))]
    cells += [num(r.get("visage")), num(at_b), "<td>" + " · ".join(x for x in links if x) + "</td>"]
    out.append("<tr>" + "".join(cells) + "</tr>")
  spec = table.get("spec") or {}
  body = [f"<h1>Study: {esc(table.get('model', ''))}</h1>",
          f"<p>{len(rows)} runs; keyword ASR (%) per framing (runs finetuned with several seeds: the mean, per seed "
          "in brackets), "
          f"task metrics (%), VISAGE of a 1-D random landscape; whole study {fmt(table.get('seconds'))} s.</p>",
          "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(out) + "</table>"]
  surface = table.get("surface")
  if surface:
    link = _linked_report(results_dir, os.path.join(results_dir, surface.get("dir", "surface_2d")), "its report")
    body.append(f"<p>2-D interpolation × random landscape aligned → <code>{esc(surface.get('run'))}</code>: VISAGE "
                f"{fmt(surface.get('visage'))} ({link or 'no results dir'}).</p>")
  body.append("<h2>Findings (as measured)</h2>" + value_html(table.get("findings") or {}))
  for name in ("framed_asr.png", "interpolation.png"):
    if os.path.isfile(os.path.join(results_dir, name)):
      body.append(png_img(os.path.join(results_dir, name)))
  body.append("<details><summary>spec</summary>" + value_html(spec) + "</details>")
  if table.get("judge"):
    body.append("<details><summary>judge</summary>" + value_html(table["judge"]) + "</details>")
  return page_html(f"Study: {table.get('model', '')}", "\n".join(body))


def render_findings(results_dir: str) -> str:
  """The HTML page of a findings dir (findings.json): each finding's verdict, numbers, plots and results."""
  doc = results.read_json(os.path.join(results_dir, FINDINGS))
  items = doc.get("findings") or []
  toc = "".join(f'<li><a href="#finding-{esc(f.get("id"))}">{esc(f.get("title", f.get("id")))}</a> '
                f'<span class="badge {_VERDICT_CLASS.get(f.get("verdict"), "")}">{esc(f.get("verdict"))}</span></li>'
                for f in items)
  body = [f"<h1>{esc(doc.get('title', 'Findings'))}</h1>", f"<p>{inline_code(doc.get('intro', ''))}</p>", f"<ul>{toc}</ul>"]
  for f in items:
    sec = [f'<h2 id="finding-{esc(f.get("id"))}">{esc(f.get("title", f.get("id")))} '
           f'<span class="badge verdict {_VERDICT_CLASS.get(f.get("verdict"), "")}">{esc(f.get("verdict"))}</span></h2>',
           "<table>" + "".join(f"<tr><th>{k}</th><td>{inline_code(f.get(k, ''))}</td></tr>"
                               for k in ("claim", "criterion", "why")) + "</table>"]
    if f.get("numbers"):
      sec.append("<h3>Numbers</h3><table>" + "".join(f'<tr><th>{esc(k)}</th><td class="num">{esc(fmt(v))}</td></tr>'
                                                     for k, v in f["numbers"].items()) + "</table>")
    for rel in f.get("plots") or []:
      path = os.path.join(results_dir, rel)
      sec.append(png_img(path) if os.path.isfile(path) else f'<p class="hint">missing plot {esc(rel)}</p>')
    links = []
    for name, rel in (f.get("results") or {}).items():
      link = _linked_report(results_dir, os.path.normpath(os.path.join(results_dir, rel)), name)
      links.append(f"<li>{link or esc(name)} <code>{esc(rel)}</code>{'' if link else ' (no results there)'}</li>")
    if links:
      sec.append("<h3>Results</h3><ul>" + "".join(links) + "</ul>")
    body.append("\n".join(sec))
  if doc.get("calibration"):
    body.append("<h2>Study calibration</h2>" + value_html(doc["calibration"]))
  if doc.get("seconds"):
    body.append("<h2>Wall time (s)</h2>" + value_html(doc["seconds"]))
  if doc.get("commands"):
    body.append("<h2>Commands</h2><pre>" + esc("\n".join(doc["commands"])) + "</pre>")
  return page_html(str(doc.get("title", "Findings")), "\n".join(body))
