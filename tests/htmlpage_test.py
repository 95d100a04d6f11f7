"""The page shell's pure helpers: exact output for escaping, formatting, embedded data and links."""

import json

from jaxscape.reports import htmlpage


def test_escape_and_code_spans():
  assert htmlpage.esc('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
  assert htmlpage.inline_code("run `a<b` now") == "run <code>a&lt;b</code> now"


def test_fmt():
  assert [htmlpage.fmt(v) for v in (None, True, False, 0.1234567891, 3, [1.5, None, "x"])] == [
      "-", "true", "false", "0.123457", "3", "1.5, -, x"]


def test_value_html_nests_dicts_and_inlines_records():
  inner = "<table><tr><th>b</th><td>1</td></tr></table>"
  assert htmlpage.value_html({"a": {"b": 1}}) == f"<table><tr><th>a</th><td>{inner}</td></tr></table>"
  assert htmlpage.value_html([{"k": "<v>"}]) == "<code>[{&quot;k&quot;: &quot;&lt;v&gt;&quot;}]</code>"


def test_json_script_cannot_be_closed_by_its_data():
  obj = {"text": "</script><script>alert(1)</script>"}
  tag = htmlpage.json_script(obj)
  assert "</script>" not in tag[:-len("</script>")]
  assert json.loads(tag[tag.index(">") + 1:-len("</script>")]) == obj


def test_page_forbids_fetches_and_links_are_relative():
  page = htmlpage.page_html("t<", "<p>b</p>", script="1")
  assert f'content="{htmlpage.CSP}"' in page and "<title>t&lt;</title>" in page and "<script>1</script>" in page
  assert htmlpage.href("/r/study", "/r/study/runs/a b/report.html") == "runs/a%20b/report.html"
