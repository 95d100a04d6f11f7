"""The shell of every ``report.html`` page and the helpers its sections share: escaping, formatting, embedding.

A page loads nothing from the network: its Content-Security-Policy forbids every fetch, and styles,
scripts, data (a JSON ``<script>``) and images (PNG data URIs) are all inside the file.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import urllib.parse
from typing import Any

# Content-Security-Policy: the page itself forbids every fetch (scripts, styles, images, fonts, frames).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
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


def esc(x: Any) -> str:
  """``str(x)`` with HTML's special characters (quotes too) escaped."""
  return html.escape(str(x), quote=True)


def inline_code(text: Any) -> str:
  """Escaped text with Markdown's `code` spans as <code> (the findings' prose is written for Markdown too)."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def fmt(v: Any) -> str:
  """A JSON value as short text: None as "-", booleans lower-case, floats to 6 significant digits, lists joined."""
  if isinstance(v, bool) or v is None:
    return "-" if v is None else str(v).lower()
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, (list, tuple)):
    return ", ".join(fmt(x) for x in v)
  return str(v)


def value_html(v: Any, depth: int = 0) -> str:
  """A JSON value as HTML: dicts as nested key/value tables, the rest as escaped text."""
  if isinstance(v, dict) and v and depth < 4:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{value_html(x, depth + 1)}</td></tr>"
                               for k, x in v.items()) + "</table>"
  if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)):
    return f"<code>{esc(json.dumps(v))}</code>"  # too deep, or a list of records
  return esc(fmt(v))


def page_html(title: str, body: str, *, script: str = "") -> str:
  """A whole HTML document: the CSP, the shared styles, ``body`` and an inline ``script``."""
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
          + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")


def json_script(obj: Any) -> str:
  """``<script type="application/json" id="data">``; every ``<`` escaped so no text can end the script."""
  text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
  return f'<script type="application/json" id="data">{text}</script>'


def href(from_dir: str, target: str) -> str:
  """A URL-quoted relative link from a page in ``from_dir`` to ``target``."""
  rel = os.path.relpath(target, from_dir).replace(os.sep, "/")
  return urllib.parse.quote(rel)


def png_img(path: str) -> str:
  """An ``<img>`` holding the PNG at ``path`` as a data URI."""
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  return f'<img alt="{esc(os.path.basename(path))}" src="data:image/png;base64,{data}">'
