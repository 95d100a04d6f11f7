"""report.html in a real browser: headless Debian chromium driven by selenium, from a file:// URL.

Skips without selenium, /usr/bin/chromium or /usr/bin/chromedriver, except under CI (env CI set),
where a missing browser is a failure (.ci/run installs chromium and chromium-driver with apt).
"""

import json
import os
import shutil

import pytest

from jaxscape.reports import htmlreport

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
  try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
  except ImportError:
    missing.append("the selenium package")
  if missing:
    msg = f"no {', '.join(missing)} (apt-get install -y chromium chromium-driver; pip install selenium)"
    if os.environ.get("CI"):
      pytest.fail(f"CI needs the browser test: {msg}")
    pytest.skip(msg)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  yield driver
  driver.quit()


def _lines(d):
  with open(os.path.join(d, "generations.jsonl"), encoding="utf-8") as f:
    return [json.loads(x) for x in f]


def _panel(driver):
  """(title, [(prompt, generation)]) of the generations panel, as the page shows them."""
  from selenium.webdriver.common.by import By
  panel = driver.find_element(By.ID, "generations")
  title = panel.find_element(By.CSS_SELECTOR, ".point-title").get_property("textContent")
  items = [(li.find_element(By.CSS_SELECTOR, ".prompt").get_property("textContent"),
            li.find_element(By.CSS_SELECTOR, ".text").get_property("textContent"))
           for li in panel.find_elements(By.CSS_SELECTOR, "li.gen")]
  return title, items


@pytest.mark.parametrize("name", ["1d", "2d"])
def test_click_points_lists_their_generations(browser, scan_dir, tmp_path, name):
  from selenium.webdriver.common.by import By
  d = str(tmp_path / name)
  shutil.copytree(scan_dir(name), d)
  lines = _lines(d)
  lines[-1]["output"][0]["generation"] = "</script><b>x</b>"  # must show as text, never as markup
  with open(os.path.join(d, "generations.jsonl"), "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(x) + "\n" for x in lines))
  page = htmlreport.write_report(d)
  want = [[(o["prompt"], o["generation"]) for o in line["output"]] for line in lines]
  a, b = 0, len(lines) - 1
  assert want[a] != want[b]

  browser.get("file://" + os.path.abspath(page))
  assert browser.find_element(By.ID, "generations").find_elements(By.CSS_SELECTOR, "li.gen") == []
  browser.find_element(By.ID, f"point-{a}").click()
  title, items = _panel(browser)
  assert items == want[a] and title.startswith(f"Point {a} at (")
  assert title.endswith(f"ASR {round(lines[a]['asr'], 2):g}%")  # as the page's pct() rounds
  assert "sel" in browser.find_element(By.ID, f"point-{a}").get_attribute("class")

  browser.find_element(By.ID, f"point-{b}").click()
  title2, items2 = _panel(browser)
  assert items2 == want[b] and title2 != title and title2.startswith(f"Point {b} at (")
  assert items2[0][1] == "</script><b>x</b>"
  assert browser.find_element(By.ID, "generations").find_elements(By.TAG_NAME, "b") == []
  assert "sel" not in (browser.find_element(By.ID, f"point-{a}").get_attribute("class") or "")
  marks = browser.find_elements(By.CSS_SELECTOR, "#generations .mark")
  assert len(marks) == len(want[b]) and all(m.text.startswith("keyword: ") for m in marks)

  shot = str(tmp_path / f"report_{name}.png")
  assert browser.save_screenshot(shot)
  assert os.path.getsize(shot) > 0
