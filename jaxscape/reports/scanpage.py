"""The ``report.html`` page of a scan's results dir: its landscape as inline SVG (1-D curves, 2-D heatmap), a
table per point, and a panel listing a clicked point's generations with their keyword and judges' marks.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxscape.core import metrics
from jaxscape.core import results
from jaxscape.errors import InputError
from jaxscape.reports.htmlpage import esc, fmt, json_script, page_html, value_html

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_AXES = {"1d_random": ("random direction", None), "1d_interpolation": ("interpolation θa→θb", None),
         "2d_random": ("random direction 1", "random direction 2"),
         "2d_interpolation": ("interpolation θa→θb", "interpolation θa→θc"),
         "2d_interpolation_random": ("interpolation θa→θb", "random direction")}

# Shows the clicked point's generations in the #generations panel; model output is only ever set as text.
SCRIPT = """
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
  out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">{esc(xlabel)}</text>'
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
                   f'fill="{colour}"{fault}><title>point {i}: ({xs[i]:g}) {esc(name)} {v:.4g}%</title></circle>')
  x, y = L, H + 14  # the legend: a band below the axes, as many rows as it needs
  for colour, dash, label in legend:
    width = 38 + 6.2 * len(label)
    if x + width > W and x > L:
      x, y = L, y + 16
    out.append(f'<line x1="{x:.0f}" x2="{x + 24:.0f}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2" '
               f'stroke-dasharray="{dash or "none"}"/><text x="{x + 29:.0f}" y="{y + 4}">{esc(label)}</text>')
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
                 f"<title>{esc(tip)}</title></rect>")
      if cell >= 26 and v is not None:
        ink = "#000" if v > 60 else "#fff"
        out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}" '
                   f'pointer-events="none">{v:.0f}</text>')
    if i % step == 0:
      out.append(f'<text x="{L + (i + .5) * cell}" y="{T + n2 * cell + 14}" text-anchor="middle">{xs[i]:g}</text>')
  for j in range(0, n2, step):
    out.append(f'<text x="{L - 5}" y="{T + (n2 - j - .5) * cell + 4}" text-anchor="end">{ys[j]:g}</text>')
  xl, yl = _AXES.get(str(summary.get("kind")), ("direction 1", "direction 2"))
  out.append(f'<text x="{L + n1 * cell / 2}" y="{H - 10}" text-anchor="middle">{esc(xl)}</text>'
             f'<text x="12" y="{T + n2 * cell / 2}" text-anchor="middle" '
             f'transform="rotate(-90 12 {T + n2 * cell / 2})">{esc(yl or "direction 2")}</text>')
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
      out.append(f"<details><summary>{esc(label)} per cell</summary><table><tr><th></th>"
                 + "".join(f"<th>{x:g}</th>" for x in xs) + f"</tr>{body}</table></details>")
    return "".join(out)
  by_dir: dict[int, list[int]] = {}
  for i, p in enumerate(pts):
    by_dir.setdefault(int(p["direction"]), []).append(i)
  head = "<tr><th>coordinate</th>" + "".join(f"<th>{esc(fmt(pts[i]['coords'][0]))}</th>"
                                             for i in next(iter(by_dir.values()), [])) + "</tr>"
  body = "".join(f"<tr><th>{esc(label)}" + (f", direction {d}" if len(by_dir) > 1 else "") + "</th>"
                 + "".join(cell(i, get(pts[i], k)) for i in ids) + "</tr>"
                 for d, ids in by_dir.items() for label, k in rows)
  return f"<table>{head}{body}</table>"


def render_scan(results_dir: str) -> str:
  """The HTML page of a scan's results dir (summary.json, generations.jsonl)."""
  summary = results.read_json(os.path.join(results_dir, results.SUMMARY_FILE))
  lines = []
  gpath = os.path.join(results_dir, results.GENERATIONS_FILE)
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
               f" ± {summary['visage_std']:.2f} (per direction {fmt(summary.get('visage_per_direction'))})"
               if summary.get("visage_std") is not None else ""),
           "non-finite points": fmt(summary.get("nonfinite_points")) or "none"}
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
      facts[f"judge {name}"] = (f"VISAGE {fmt(j.get('visage'))}, {j.get('format')}, threshold {j.get('threshold')}, "
                                f"agrees with the keywords on {fmt(j.get('agreement_percent'))}% of pairs")
  details = "".join(f"<details><summary>{esc(k)}</summary>{value_html(summary[k])}</details>"
                    for k in ("fingerprints", "versions", "directions", "plan", "mesh", "host") if summary.get(k))
  title = f"{summary.get('kind', 'scan')}: {os.path.basename(os.path.abspath(results_dir))}"
  png = ' (<a href="landscape.png">landscape.png</a>)' if os.path.isfile(os.path.join(results_dir, "landscape.png")) \
      else ""
  body = (f"<h1>{esc(title)}</h1>"
          f"<p class=\"hint\">Click a {'cell' if two_d else 'point'} to list its generations{png}.</p>"
          + (_svg_2d(data, summary) if two_d else _svg_1d(data, summary))
          + '<div id="generations"><p class="hint">No point selected.</p></div>'
          + "<h2>Summary</h2><table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>"
                                                  for k, v in facts.items()) + "</table>"
          + "<h3>Per point</h3>" + _point_table(data, summary) + details
          + "<h2>Timings</h2>" + value_html(summary.get("timings") or {})
          + "<h2>Flags</h2><details><summary>flags of the run</summary>" + value_html(flags) + "</details>"
          + json_script(data))
  return page_html(title, body, script=SCRIPT)
