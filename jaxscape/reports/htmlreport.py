"""A self-contained interactive ``report.html`` for a results dir: a scan, a study or a findings dir.

  path = jaxscape.reports.htmlreport.write_report("results/toy_1d_random")   # open it in any browser

A scan's page draws its landscape as inline SVG (1-D curves, 2-D heatmap); clicking a point lists
that point's generations with their keyword refusal mark and judges' marks. A study's page holds
its table, a findings dir's page its findings; both link the report of every landscape they used.
Pages load nothing from the network: styles, script, data and plots are all inside the file.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import urllib.parse
from typing import Any

from jaxscape.core import metrics
from jaxscape.core import results
from jaxscape.errors import InputError

REPORT = "report.html"
SUMMARY, GENERATIONS, TABLE, FINDINGS = "summary.json", "generations.jsonl", "table.json", "findings.json"
_VERDICT_CLASS = {"reproduced": "ok", "partly": "partly", "not reproduced": "bad"}
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_AXES = {"1d_random": ("random direction", None), "1d_interpolation": ("interpolation θa→θb", None),
         "2d_random": ("random direction 1", "random direction 2"),
         "2d_interpolation": ("interpolation θa→θb", "interpolation θa→θc"),
         "2d_interpolation_random": ("interpolation θa→θb", "random direction")}

# Content-Security-Policy: the page itself forbids every fetch (scripts, styles, images, fonts, frames).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1100px;
 padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 7px;text-align:left;
 vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.4em 0}summary{cursor:pointer;color:#335}code,pre{font-family:ui-monospace,Menlo,monospace;
 font-size:12.5px}pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px;background:#777}
.badge.ok{background:#2a8a3e}.badge.partly{background:#c88a00}.badge.bad{background:#c0392b}
.seeds{color:#666;font-size:12px}.hint{color:#666}svg{max-width:100%;height:auto;font-size:11px}
[data-point]{cursor:pointer}[data-point]:hover,[data-point].sel{stroke:#000;stroke-width:3}
.fault{stroke:crimson;stroke-width:2.5}
#generations{border:1px solid #ccc;border-radius:6px;padding:.3em 1em;margin:1em 0;background:#fafafa}
#generations ol{padding-left:2em}.gen{margin:.6em 0;border-bottom:1px dashed #ddd;padding-bottom:.4em}
.prompt{color:#335;font-weight:600}.mark{display:inline-block;font-size:12px;padding:0 6px;margin-right:6px;
 border-radius:7px;background:#eee}.mark.refusal,.mark.safe{background:#d8efd8}
.mark.complies,.mark.unsafe,.mark.coherent{background:#f6d5d0}.mark.incoherent{background:#e4e0f0}img{max-width:100%}
"""

_JS = """
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  var panel = document.getElementById("generations");
  var current = null;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML: model output
    return e;
  }
  function pct(v) { return v === null || v === undefined ? "-" : (Math.round(v * 100) / 100) + "%"; }
  function show(i) {
    var p = data.points[i];
    if (!p) return;
    if (current) current.classList.remove("sel");
    current = document.getElementById("point-" + i);
    if (current) current.classList.add("sel");
    panel.textContent = "";
    var dir = data.num_directions > 1 ? ", direction " + p.direction : "";
    panel.appendChild(el("h3", "point-title", "Point " + i + dir + " at (" + p.coords.join(", ") + "): ASR " +
                         pct(p.asr)));
    var meta = [];
    if (p.asr_coherent !== undefined) meta.push("coherent ASR " + pct(p.asr_coherent) + ", incoherent " +
                                                pct(p.incoherent));
    if (p.capability !== undefined) meta.push("capability " + pct(p.capability));
    Object.keys(p.judged_asr || {}).forEach(function (n) {
      meta.push("judge " + n + ": ASR " + pct(p.judged_asr[n]));
    });
    if (p.nonfinite) meta.push("non-finite logits at this point");
    if (meta.length) panel.appendChild(el("p", "point-meta", meta.join(" | ")));
    var gens = p.gen || [];
    if (!gens.length) { panel.appendChild(el("p", "hint", "No generations stored at this point.")); return; }
    var ol = el("ol", "gens");
    gens.forEach(function (g, j) {
      var li = el("li", "gen");
      li.appendChild(el("div", "prompt", data.prompts[p.prompt ? p.prompt[j] : j]));
      li.appendChild(el("pre", "text", g));
      var marks = el("div", "marks");
      var r = p.refused[j];
      marks.appendChild(el("span", "mark " + (r ? "refusal" : "complies"),
                           r ? "keyword: refusal" : "keyword: no refusal"));
      if (p.truncated && p.truncated.indexOf(j) >= 0) marks.appendChild(el("span", "mark", "stopped once decided"));
      if (p.coherence) {
        var lab = p.coherence.label[j];
        marks.appendChild(el("span", "mark " + lab, lab + " (nll/token " + p.coherence.nll[j].toFixed(3) + ")"));
      }
      Object.keys(p.judges || {}).forEach(function (n) {
        var jj = p.judges[n], u = jj.unsafe[j];
        marks.appendChild(el("span", "mark " + (u ? "unsafe" : "safe"),
                             n + ": " + (u ? "unsafe" : "safe") + " (p_unsafe " + jj.p[j].toFixed(3) + ")"));
      });
      li.appendChild(marks);
      ol.appendChild(li);
    });
    panel.appendChild(ol);
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-point]"), function (e) {
    var i = +e.getAttribute("data-point");
    e.addEventListener("click", function () { show(i); });
    e.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); show(i); }
    });
  });
  var m = /^#point-(\\d+)$/.exec(location.hash);
  if (m) show(+m[1]);
})();
"""


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


# ----------------------------------------------------------------- helpers


def _e(x: Any) -> str:
  return html.escape(str(x), quote=True)


def _inline(text: Any) -> str:
  """Escaped text with Markdown's `code` spans as <code> (the findings' prose is written for Markdown too)."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _fmt(v: Any) -> str:
  if isinstance(v, bool) or v is None:
    return "-" if v is None else str(v).lower()
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, (list, tuple)):
    return ", ".join(_fmt(x) for x in v)
  return str(v)


def _value_html(v: Any, depth: int = 0) -> str:
  """A JSON value as HTML: dicts as nested key/value tables, the rest as escaped text."""
  if isinstance(v, dict) and v and depth < 4:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(x, depth + 1)}</td></tr>"
                               for k, x in v.items()) + "</table>"
  if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)):
    return f"<code>{_e(json.dumps(v))}</code>"  # too deep, or a list of records
  return _e(_fmt(v))


def _page(title: str, body: str, *, script: str = "") -> str:
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
          + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")


def _json_script(obj: Any) -> str:
  """``<script type="application/json" id="data">``; every ``<`` escaped so no text can end the script."""
  text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
  return f'<script type="application/json" id="data">{text}</script>'


def _href(from_dir: str, target: str) -> str:
  rel = os.path.relpath(target, from_dir).replace(os.sep, "/")
  return urllib.parse.quote(rel)


def _png(path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  return f'<img alt="{_e(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _linked_report(from_dir: str, target: str, label: str) -> str:
  """A relative link to ``target``'s report.html, written first when missing ('' for no results there)."""
  if kind_of(target) is None:
    return ""
  if not os.path.isfile(os.path.join(target, REPORT)):
    write_report(target)
  return f'<a href="{_href(from_dir, os.path.join(target, REPORT))}">{_e(label)}</a>'


def _flat(v: Any) -> list | None:
  """Per-point values in generations.jsonl order (several directions: direction-major)."""
  if v is None:
    return None
  return [x for row in v for x in row] if v and isinstance(v[0], list) else list(v)


def _colour(v: float | None) -> str:
  if v is None:
    return "#bbb"
  t = min(max(v / 100.0, 0.0), 1.0) * (len(_VIRIDIS) - 1)
  i = min(int(t), len(_VIRIDIS) - 2)
  a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
  return "#" + "".join(f"{round(x + (y - x) * (t - i)):02x}" for x, y in zip(a, b))


# ----------------------------------------------------------------- scans


def scan_data(summary: dict, lines: list[dict]) -> dict:
  """The page's data: ``{"prompts": [P], "points": [K] per-point dicts, ...}`` in generations.jsonl order.

  Each point holds ``coords``, ``asr``, ``gen`` (its generations), ``refused`` (0/1 keyword refusal,
  ``metrics.is_refusal``), ``prompt`` (indices into ``prompts``, only where they differ from
  0..n-1), ``truncated`` (indices), ``judges`` ``{name: {"p": [..], "unsafe": [0/1 ..]}}``, and with
  coherence scores ``asr_coherent``, ``incoherent`` and ``coherence`` ``{"label": [..], "nll": [..]}``.
  """
  asr, cap = _flat(summary.get("asr")), _flat(summary.get("capability"))
  coherent, incoherent = _flat(summary.get("asr_coherent")), _flat(summary.get("incoherent"))
  judged = {n: _flat(j.get("asr")) for n, j in (summary.get("judges") or {}).items() if isinstance(j, dict)}
  n_dirs = int(summary.get("num_directions") or 1)
  coords = summary.get("coords") or []
  n = len(lines) or len(asr or cap or [])
  prompts: dict[str, int] = {}
  points = []
  for i in range(n):
    line = lines[i] if i < len(lines) else {}
    c = line.get("coords", coords[i % len(coords)] if coords else [])
    p = {"coords": c if isinstance(c, list) else [c], "direction": line.get("direction", i // max(1, n // n_dirs)),
         "asr": line.get("asr", asr[i] if asr else None), "nonfinite": bool(line.get("nonfinite", False))}
    if cap or "capability" in line:
      p["capability"] = line.get("capability", cap[i] if cap else None)
    p["judged_asr"] = {name: v[i] for name, v in judged.items() if v and i < len(v)}
    if coherent and incoherent and i < len(coherent):
      p["asr_coherent"], p["incoherent"] = coherent[i], incoherent[i]
    out = line.get("output") or []
    if out and all("label" in o for o in out):
      p["coherence"] = {"label": [o["label"] for o in out], "nll": [round(float(o["nll_per_token"]), 4) for o in out]}
    p["gen"] = [o["generation"] for o in out]
    p["refused"] = [int(metrics.is_refusal(g)) for g in p["gen"]]
    idx = [prompts.setdefault(o["prompt"], len(prompts)) for o in out]
    if idx != list(range(len(idx))):
      p["prompt"] = idx
    cut = [j for j, o in enumerate(out) if o.get("truncated")]
    if cut:
      p["truncated"] = cut
    names = sorted({name for o in out for name in (o.get("judges") or {})})
    p["judges"] = {name: {"p": [round(float(o["judges"][name]["p_unsafe"]), 5) for o in out],
                          "unsafe": [int(bool(o["judges"][name]["unsafe"])) for o in out]}
                   for name in names if all(name in (o.get("judges") or {}) for o in out)}
    points.append(p)
  return {"kind": summary.get("kind"), "num_directions": n_dirs, "prompts": list(prompts), "points": points}


def _svg_1d(data: dict, summary: dict) -> str:
  """Curves of ASR (and coherent ASR, the incoherent share, capability, judges: dashed and dotted) per
  point; one colour per direction."""
  pts = data["points"]
  W, H, L, R, T, B = 760, 330, 52, 16, 18, 46
  xs = [float(p["coords"][0]) if p["coords"] else float(i) for i, p in enumerate(pts)]
  lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
  lo, hi = (lo - 1, hi + 1) if lo == hi else (lo, hi)
  X = lambda x: L + (x - lo) / (hi - lo) * (W - L - R)  # noqa: E731
  Y = lambda v: T + (1 - min(max(v, 0), 100) / 100) * (H - T - B)  # noqa: E731
  out = [f'<svg id="landscape" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">']
  for v in (0, 25, 50, 75, 100):
    out.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e4e4e4"/>'
               f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v}</text>')
  ticks = sorted(set(xs))
  for x in ticks[::max(1, -(-len(ticks) // 11))]:
    out.append(f'<text x="{X(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x:g}</text>')
  xlabel = _AXES.get(str(summary.get("kind")), ("coordinate", None))[0]
  out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">{_e(xlabel)}</text>'
             f'<text x="14" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 14 {(T + H - B) / 2})">'
             "percent</text>")
  by_dir: dict[int, list[int]] = {}
  for i, p in enumerate(pts):
    by_dir.setdefault(int(p["direction"]), []).append(i)
  key = "asr" if any(p["asr"] is not None for p in pts) else "capability"
  legend = []
  for d, ids in by_dir.items():
    colour = _COLOURS[d % len(_COLOURS)]
    series = [(key, "", True)]  # (value, dash pattern, clickable)
    if key == "asr" and any(pts[i].get("asr_coherent") is not None for i in ids):
      series += [("asr_coherent", "8 3 2 3", False), ("incoherent", "1 3", False)]
    if key == "asr" and any(pts[i].get("capability") is not None for i in ids):
      series.append(("capability", "6 4", False))
    series += [(f"judge:{n}", "2 3", False) for n in pts[ids[0]]["judged_asr"]]
    for name, dash, clickable in series:
      vals = [(pts[i].get(name) if not name.startswith("judge:") else pts[i]["judged_asr"].get(name[6:]))
              for i in ids]
      xy = [(X(xs[i]), Y(v)) for i, v in zip(ids, vals) if v is not None]
      out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" stroke-dasharray="{dash or "none"}" '
                 f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}"/>')
      label = ({"asr": "keyword ASR", "capability": "capability", "asr_coherent": "coherent ASR",
                "incoherent": "incoherent share"}.get(name) or f"judge {name[6:]} ASR") + (
          f", direction {d}" if len(by_dir) > 1 else "")
      legend.append((colour, dash, label))
      if not clickable:
        continue
      for i, v in zip(ids, vals):
        if v is None:
          continue
        fault = ' class="fault"' if pts[i]["nonfinite"] else ""
        out.append(f'<circle id="point-{i}" data-point="{i}" tabindex="0" cx="{X(xs[i]):.1f}" cy="{Y(v):.1f}" r="6" '
                   f'fill="{colour}"{fault}><title>point {i}: ({xs[i]:g}) {_e(name)} {v:.4g}%</title></circle>')
  x, y = L, H + 14  # the legend: a band below the axes, as many rows as it needs
  for colour, dash, label in legend:
    width = 38 + 6.2 * len(label)
    if x + width > W and x > L:
      x, y = L, y + 16
    out.append(f'<line x1="{x:.0f}" x2="{x + 24:.0f}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2" '
               f'stroke-dasharray="{dash or "none"}"/><text x="{x + 29:.0f}" y="{y + 4}">{_e(label)}</text>')
    x += width
  out[0] = f'<svg id="landscape" viewBox="0 0 {W} {y + 10}" width="{W}" height="{y + 10}" role="img">'
  return "".join(out) + "</svg>"


def _svg_2d(data: dict, summary: dict) -> str:
  """A heatmap of the grid, cells coloured by ASR (viridis, 0-100%): first direction across, second up."""
  pts = data["points"]
  axes = summary.get("axes") or {}
  xs = axes.get("x") or list(dict.fromkeys(p["coords"][0] for p in pts))
  ys = axes.get("y") or list(dict.fromkeys(p["coords"][1] for p in pts))
  n1, n2 = len(xs), len(ys)
  if n1 * n2 != len(pts):
    raise InputError(f"the {n1}x{n2} grid of summary.json's axes does not match its {len(pts)} points")
  cell = max(12, min(44, 620 // max(n1, n2)))
  L, T, B, bar = 62, 12, 50, 70
  W, H = L + n1 * cell + bar, T + n2 * cell + B
  key = "asr" if any(p["asr"] is not None for p in pts) else "capability"
  out = [f'<svg id="landscape" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><defs>'
         '<linearGradient id="ramp" x1="0" x2="0" y1="1" y2="0">'
         + "".join(f'<stop offset="{k / 4}" stop-color="{_colour(25.0 * k)}"/>' for k in range(5))
         + "</linearGradient></defs>"]
  step = max(1, -(-max(n1, n2) // 11))
  for i in range(n1):
    for j in range(n2):
      pid, v = i * n2 + j, pts[i * n2 + j].get(key)
      x, y = L + i * cell, T + (n2 - 1 - j) * cell
      fault = ' class="fault"' if pts[pid]["nonfinite"] else ""
      tip = f"point {pid}: ({xs[i]:g}, {ys[j]:g}) {key} " + ("-" if v is None else f"{v:.4g}%")
      out.append(f'<rect id="point-{pid}" data-point="{pid}" tabindex="0" x="{x}" y="{y}" width="{cell}" '
                 f'height="{cell}" fill="{_colour(v)}" stroke="#fff" stroke-width="0.5"{fault}>'
                 f"<title>{_e(tip)}</title></rect>")
      if cell >= 26 and v is not None:
        ink = "#000" if v > 60 else "#fff"
        out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}" '
                   f'pointer-events="none">{v:.0f}</text>')
    if i % step == 0:
      out.append(f'<text x="{L + (i + .5) * cell}" y="{T + n2 * cell + 14}" text-anchor="middle">{xs[i]:g}</text>')
  for j in range(0, n2, step):
    out.append(f'<text x="{L - 5}" y="{T + (n2 - j - .5) * cell + 4}" text-anchor="end">{ys[j]:g}</text>')
  xl, yl = _AXES.get(str(summary.get("kind")), ("direction 1", "direction 2"))
  out.append(f'<text x="{L + n1 * cell / 2}" y="{H - 10}" text-anchor="middle">{_e(xl)}</text>'
             f'<text x="12" y="{T + n2 * cell / 2}" text-anchor="middle" '
             f'transform="rotate(-90 12 {T + n2 * cell / 2})">{_e(yl or "direction 2")}</text>')
  bx = L + n1 * cell + 16
  out.append(f'<rect x="{bx}" y="{T}" width="14" height="{n2 * cell}" fill="url(#ramp)"/>'
             + "".join(f'<text x="{bx + 18}" y="{T + n2 * cell * (1 - v / 100) + 4}">{v}%</text>'
                       for v in (0, 50, 100)))
  return "".join(out) + "</svg>"


def _point_table(data: dict, summary: dict) -> str:
  """ASR (and capability, judges) per point; every cell selects its point like the plot does."""
  pts = data["points"]
  cell = lambda i, v: (f'<td class="num" data-point="{i}">{"-" if v is None else f"{v:.4g}"}</td>')  # noqa: E731
  rows = [("ASR %", "asr")]
  if any("asr_coherent" in p for p in pts):
    rows += [("coherent ASR %", "asr_coherent"), ("incoherent %", "incoherent")]
  rows += [("capability %", "capability")] if any("capability" in p for p in pts) else []
  rows += [(f"judge {n} ASR %", f"judge:{n}") for n in (pts[0]["judged_asr"] if pts else {})]
  get = lambda p, k: p["judged_asr"].get(k[6:]) if k.startswith("judge:") else p.get(k)  # noqa: E731
  axes = summary.get("axes") or {}
  if axes.get("y"):  # 2-D: one matrix per metric, rows = second direction from the top, as the heatmap
    xs, ys = axes["x"], axes["y"]
    out = []
    for label, k in rows:
      body = "".join(f"<tr><th>{ys[j]:g}</th>" + "".join(cell(i * len(ys) + j, get(pts[i * len(ys) + j], k))
                                                         for i in range(len(xs))) + "</tr>"
                     for j in reversed(range(len(ys))))
      out.append(f"<details><summary>{_e(label)} per cell</summary><table><tr><th></th>"
                 + "".join(f"<th>{x:g}</th>" for x in xs) + f"</tr>{body}</table></details>")
    return "".join(out)
  by_dir: dict[int, list[int]] = {}
  for i, p in enumerate(pts):
    by_dir.setdefault(int(p["direction"]), []).append(i)
  head = "<tr><th>coordinate</th>" + "".join(f"<th>{_e(_fmt(pts[i]['coords'][0]))}</th>"
                                             for i in next(iter(by_dir.values()), [])) + "</tr>"
  body = "".join(f"<tr><th>{_e(label)}" + (f", direction {d}" if len(by_dir) > 1 else "") + "</th>"
                 + "".join(cell(i, get(pts[i], k)) for i in ids) + "</tr>"
                 for d, ids in by_dir.items() for label, k in rows)
  return f"<table>{head}{body}</table>"


def render_scan(results_dir: str) -> str:
  """The HTML page of a scan's results dir (summary.json, generations.jsonl)."""
  summary = results.read_json(os.path.join(results_dir, SUMMARY))
  lines = []
  gpath = os.path.join(results_dir, GENERATIONS)
  if os.path.isfile(gpath):
    with open(gpath, encoding="utf-8") as f:
      lines = [json.loads(x) for x in f if x.strip()]
  data = scan_data(summary, lines)
  two_d = bool((summary.get("axes") or {}).get("y"))
  flags = summary.get("flags") or {}
  fps = summary.get("fingerprints") or {}
  model = " → ".join(str(flags[k]) for k in ("model", "model_b", "model_c") if flags.get(k)) or (
      f"{summary.get('model_type', '?')}, weights {fps.get('model', '?')}")
  visage = summary.get("visage")
  facts = {"kind": summary.get("kind"), "model": model, "points": len(data["points"]),
           "prompts": summary.get("n_prompts", len(data["prompts"])), "max new tokens": summary.get("max_new_tokens"),
           "prompt format": summary.get("prompt_format"), "compute dtype": summary.get("compute_dtype"),
           "VISAGE": "-" if visage is None else f"{visage:.2f}" + (
               f" ± {summary['visage_std']:.2f} (per direction {_fmt(summary.get('visage_per_direction'))})"
               if summary.get("visage_std") is not None else ""),
           "non-finite points": _fmt(summary.get("nonfinite_points")) or "none"}
  if summary.get("coherence"):
    c = summary["coherence"]
    cal = c.get("calibration") or {}
    how = (f"{cal.get('percentile')}th percentile of {cal.get('samples')} temperature-1 samples and "
           f"{cal.get('references')} reference answers ({cal.get('source')})" if cal.get("percentile") else "given")
    facts["VISAGE, coherent ASR"] = f"{summary['visage_coherent']:.2f}" + (
        f" ± {summary['visage_coherent_std']:.2f}" if summary.get("visage_coherent_std") is not None else "")
    facts["coherence threshold"] = (f"{c['threshold']:.4g} NLL per token under {c.get('reference')}: {how}"
                                    + (" (texts re-tokenized)" if c.get("retokenized") else ""))
  for name, j in (summary.get("judges") or {}).items():
    if isinstance(j, dict):
      facts[f"judge {name}"] = (f"VISAGE {_fmt(j.get('visage'))}, {j.get('format')}, threshold {j.get('threshold')}, "
                                f"agrees with the keywords on {_fmt(j.get('agreement_percent'))}% of pairs")
  details = "".join(f"<details><summary>{_e(k)}</summary>{_value_html(summary[k])}</details>"
                    for k in ("fingerprints", "versions", "directions", "plan", "mesh", "host") if summary.get(k))
  title = f"{summary.get('kind', 'scan')}: {os.path.basename(os.path.abspath(results_dir))}"
  png = ' (<a href="landscape.png">landscape.png</a>)' if os.path.isfile(os.path.join(results_dir, "landscape.png")) \
      else ""
  body = (f"<h1>{_e(title)}</h1>"
          f"<p class=\"hint\">Click a {'cell' if two_d else 'point'} to list its generations{png}.</p>"
          + (_svg_2d(data, summary) if two_d else _svg_1d(data, summary))
          + '<div id="generations"><p class="hint">No point selected.</p></div>'
          + "<h2>Summary</h2><table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>"
                                                  for k, v in facts.items()) + "</table>"
          + "<h3>Per point</h3>" + _point_table(data, summary) + details
          + "<h2>Timings</h2>" + _value_html(summary.get("timings") or {})
          + "<h2>Flags</h2><details><summary>flags of the run</summary>" + _value_html(flags) + "</details>"
          + _json_script(data))
  return _page(title, body, script=_JS)


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
    cells = [f"<td><code>{_e(r.get('run'))}</code></td>", f'<td class="num">{"-" if records is None else records}</td>']
    for f in framings:
      per = " / ".join(f"{s[f]:.0f}" for s in seeds.values() if f in s)
      cells.append(num((r.get("framed_asr") or {}).get(f),
                       f' <span class="seeds" title="per seed ({_e(", ".join(seeds))})">({per})</span>' if per else ""))
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
  body = [f"<h1>Study: {_e(table.get('model', ''))}</h1>",
          f"<p>{len(rows)} runs; keyword ASR (%) per framing (runs finetuned with several seeds: the mean, per seed "
          "in brackets), "
          f"task metrics (%), VISAGE of a 1-D random landscape; whole study {_fmt(table.get('seconds'))} s.</p>",
          "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(out) + "</table>"]
  surface = table.get("surface")
  if surface:
    link = _linked_report(results_dir, os.path.join(results_dir, surface.get("dir", "surface_2d")), "its report")
    body.append(f"<p>2-D interpolation × random landscape aligned → <code>{_e(surface.get('run'))}</code>: VISAGE "
                f"{_fmt(surface.get('visage'))} ({link or 'no results dir'}).</p>")
  body.append("<h2>Findings (as measured)</h2>" + _value_html(table.get("findings") or {}))
  for name in ("framed_asr.png", "interpolation.png"):
    if os.path.isfile(os.path.join(results_dir, name)):
      body.append(_png(os.path.join(results_dir, name)))
  body.append("<details><summary>spec</summary>" + _value_html(spec) + "</details>")
  if table.get("judge"):
    body.append("<details><summary>judge</summary>" + _value_html(table["judge"]) + "</details>")
  return _page(f"Study: {table.get('model', '')}", "\n".join(body))


def render_findings(results_dir: str) -> str:
  """The HTML page of a findings dir (findings.json): each finding's verdict, numbers, plots and results."""
  doc = results.read_json(os.path.join(results_dir, FINDINGS))
  items = doc.get("findings") or []
  toc = "".join(f'<li><a href="#finding-{_e(f.get("id"))}">{_e(f.get("title", f.get("id")))}</a> '
                f'<span class="badge {_VERDICT_CLASS.get(f.get("verdict"), "")}">{_e(f.get("verdict"))}</span></li>'
                for f in items)
  body = [f"<h1>{_e(doc.get('title', 'Findings'))}</h1>", f"<p>{_inline(doc.get('intro', ''))}</p>", f"<ul>{toc}</ul>"]
  for f in items:
    sec = [f'<h2 id="finding-{_e(f.get("id"))}">{_e(f.get("title", f.get("id")))} '
           f'<span class="badge verdict {_VERDICT_CLASS.get(f.get("verdict"), "")}">{_e(f.get("verdict"))}</span></h2>',
           "<table>" + "".join(f"<tr><th>{k}</th><td>{_inline(f.get(k, ''))}</td></tr>"
                               for k in ("claim", "criterion", "why")) + "</table>"]
    if f.get("numbers"):
      sec.append("<h3>Numbers</h3><table>" + "".join(f'<tr><th>{_e(k)}</th><td class="num">{_e(_fmt(v))}</td></tr>'
                                                     for k, v in f["numbers"].items()) + "</table>")
    for rel in f.get("plots") or []:
      path = os.path.join(results_dir, rel)
      sec.append(_png(path) if os.path.isfile(path) else f'<p class="hint">missing plot {_e(rel)}</p>')
    links = []
    for name, rel in (f.get("results") or {}).items():
      link = _linked_report(results_dir, os.path.normpath(os.path.join(results_dir, rel)), name)
      links.append(f"<li>{link or _e(name)} <code>{_e(rel)}</code>{'' if link else ' (no results there)'}</li>")
    if links:
      sec.append("<h3>Results</h3><ul>" + "".join(links) + "</ul>")
    body.append("\n".join(sec))
  if doc.get("calibration"):
    body.append("<h2>Study calibration</h2>" + _value_html(doc["calibration"]))
  if doc.get("seconds"):
    body.append("<h2>Wall time (s)</h2>" + _value_html(doc["seconds"]))
  if doc.get("commands"):
    body.append("<h2>Commands</h2><pre>" + _e("\n".join(doc["commands"])) + "</pre>")
  return _page(str(doc.get("title", "Findings")), "\n".join(body))
