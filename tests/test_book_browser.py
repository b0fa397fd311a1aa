"""The book built by the session's smoke study (conftest's ``smoke_study``), read page by page in real headless
Chromium (Debian's, installed by scripts/setup_env.sh) at 1400 px, as a reader sees it. On EVERY page: no
table wider than the article column (one that scrolls sideways counts as wider), no word or number broken
across lines inside a table cell, no 'nan', 'NaN', 'None' or 'inf' shown as a value, no code input visible
unless unfolded, every figure loaded, and no two pages with one title. Then what the chapters say: the
findings right after the introduction with a verdict row per claim, and the numbers in the tables equal to
the run files."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mvlip_utils.report import findings, tables
from mvlip_utils.settings.paper import paper_reference
from mvlip_utils.study import runner
from mvlip_utils.train import run_folder

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

NAV_JS = """
const seen = new Set(); const out = [];
for (const a of document.querySelectorAll('nav a')) {
  const t = a.textContent.trim(), h = a.href.split('#')[0];
  if (t && h.endsWith('.html') && h.startsWith('file:') && !seen.has(h)) { seen.add(h); out.push([t, h]); }
}
return out;
"""
# A table is too wide when it reaches past the article column, overflows itself, or sits in a box that
# scrolls sideways to show it (a scrolling table is still wider than the page)
WIDE_JS = r"""
const a = document.querySelector('article.bd-article') || document.querySelector('main');
const right = a.getBoundingClientRect().right;
return [...a.querySelectorAll('table')].filter(t => {
  if (t.getBoundingClientRect().right > right + 2 || t.scrollWidth > t.clientWidth + 2) return true;
  for (let p = t.parentElement; p && p !== a; p = p.parentElement) if (p.scrollWidth > p.clientWidth + 2) return true;
  return false;
}).map(t => t.id || t.className || 'a table');
"""
# A word or number whose characters land on two lines of a cell; a line may break at a space, a hyphen, a
# slash or a dash (book_pages_check.py's measure)
BROKEN_JS = r"""
const out = [];
for (const cell of document.querySelectorAll('article td, article th, main td, main th')) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const text = node.textContent;
    const re = /[^\s\-\/\u2013]+/g; let m;
    while ((m = re.exec(text))) {
      if (m[0].length < 2) continue;
      const r = document.createRange();
      r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
      const lines = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
      if (lines.size > 1) out.push(m[0]);
    }
  }
}
return out;
"""
# What a reader reads: the article without code (inputs, code blocks, scripts)
TEXT_JS = r"""
const a = document.querySelector('article.bd-article') || document.querySelector('main');
const c = a.cloneNode(true);
c.querySelectorAll('div.cell_input, pre, code, script, style, .highlight').forEach(e => e.remove());
return c.innerText;
"""
UNDEFINED = re.compile(r"(?<![\w.])(nan|NaN|None|inf)(?![\w(])")
IMAGES_JS = """
return [...document.querySelectorAll('article img, main img')].map(
  i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
"""
TABLES_JS = """
const out = {};
for (const t of document.querySelectorAll('article table')) {
  if (!t.id) continue;
  out[t.id] = {head: [...t.querySelectorAll('thead tr')].map(r => [...r.cells].map(c => c.innerText.trim())),
               body: [...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))};
}
return out;
"""


def headless_chromium(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: run scripts/setup_env.sh (installs Debian's chromium)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def mean_sd(values) -> str:
    """Mean ± SD (ddof 1) as the tables show it, computed here with numpy from the run files."""
    values = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(values):
        return "–"
    return f"{values.mean():.4f}" if len(values) == 1 else f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


@pytest.fixture(scope="module")
def pages(smoke_study, tmp_path_factory):
    """Every page of the book as the reader sees it: {page: {title, wide, broken, undefined, visible inputs,
    images, tables, boxes}} in navigation order, with the navigation itself under "nav"."""
    from selenium.webdriver.support.ui import WebDriverWait

    html = smoke_study["report"]["html"]
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    seen = {}
    try:
        driver.set_page_load_timeout(60)
        driver.get((html / "index.html").as_uri())
        WebDriverWait(driver, 20).until(lambda d: len(d.execute_script(NAV_JS)) > 2)
        nav = driver.execute_script(NAV_JS)
        for _, url in [("index", (html / "index.html").as_uri())] + nav:
            name = url[len(html.as_uri()) + 1:]
            if name in seen:
                continue
            driver.get(url)
            assert driver.execute_script("return document.readyState") == "complete"
            seen[name] = {
                "title": driver.title.strip(), "wide": driver.execute_script(WIDE_JS),
                "broken": driver.execute_script(BROKEN_JS),
                "undefined": UNDEFINED.findall(driver.execute_script(TEXT_JS)),
                "visible inputs": sum(c.is_displayed() for c in driver.find_elements("css selector", "div.cell_input")),
                "images": driver.execute_script(IMAGES_JS), "tables": driver.execute_script(TABLES_JS),
                "boxes": driver.execute_script("return [...document.querySelectorAll('div.admonition')].map(d => d.innerText)")}
    finally:
        driver.quit()
    return {"nav": nav, "pages": seen, "html": html}


def test_every_page_of_the_book_is_there_and_read(pages, smoke_study):
    names = list(pages["pages"])
    encoders = ("mambavision", "swin")
    expected = ["index.html", "book/executed/00_findings.html", "book/executed/smoke/01_setup.html",
                *(f"book/executed/smoke/{e}/{nb}.html" for e in encoders for nb in ("02_train", "03_evaluate",
                                                                                   "04_benchmark")),
                "book/executed/smoke/05_discussion.html"]
    for profile, recorded in runner.recorded_editions(smoke_study["root"], exclude=["smoke"]).items():
        expected += [f"book/executed/{profile}/01_setup.html",
                     *(f"book/executed/{profile}/{e}/{nb}.html" for e in recorded for nb in ("02_train", "03_evaluate",
                                                                                            "04_benchmark")),
                     f"book/executed/{profile}/05_discussion.html"]
    assert "book/executed/speed/05_discussion.html" in expected  # the recorded speed edition is read too
    assert names == expected
    # the findings are one click from the start: the navigation entry right after the introduction
    assert pages["nav"][0][1].endswith("/index.html")
    assert "finding" in pages["nav"][1][0].lower() and pages["nav"][1][1].endswith("00_findings.html")


def test_no_page_has_a_table_wider_than_its_column_or_a_word_broken_inside_a_cell(pages):
    wide = {name: page["wide"] for name, page in pages["pages"].items() if page["wide"]}
    assert not wide, f"tables wider than the article column at 1400 px: {wide}"
    broken = {name: page["broken"][:6] for name, page in pages["pages"].items() if page["broken"]}
    assert not broken, f"words or numbers broken across lines inside table cells: {broken}"


def test_no_page_shows_an_undefined_value(pages):
    shown = {name: sorted(set(page["undefined"])) for name, page in pages["pages"].items() if page["undefined"]}
    assert not shown, f"'nan', 'None' or 'inf' shown as a value: {shown}"


def test_no_two_pages_share_a_title(pages):
    titles = Counter(page["title"] for page in pages["pages"].values())
    assert not [t for t, n in titles.items() if n > 1], titles
    assert all(page["title"] for page in pages["pages"].values())


def test_no_code_input_is_visible_and_every_figure_loaded(pages):
    visible = {name: page["visible inputs"] for name, page in pages["pages"].items() if page["visible inputs"]}
    assert not visible, f"code inputs visible without unfolding: {visible}"
    broken = {name: [i["src"] for i in page["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
              for name, page in pages["pages"].items()}
    assert not any(broken.values()), f"figures that did not load: {broken}"
    with_figures = [name for name, page in pages["pages"].items() if page["images"]]
    for name in ("05_discussion.html", "mambavision/02_train.html", "swin/02_train.html", "01_setup.html"):
        assert any(n.endswith(name) for n in with_figures), f"no figure on {name}"


def test_the_findings_give_a_verdict_row_per_claim(pages, smoke_study):
    page = pages["pages"]["book/executed/00_findings.html"]
    verdicts = page["tables"]["claims-verdicts"]
    assert verdicts["head"][0] == ["claim", "paper", "ours", "verdict", "reason"]
    claims = findings.paper_claims(paper_reference())
    assert [row[0] for row in verdicts["body"]] == [c["claim"] for c in claims]
    assert all(row[3] in findings.VERDICTS for row in verdicts["body"])
    # the smoke edition judges nothing: every verdict comes from the recorded speed edition or there is none
    assert all(row[3] == "no verdict" or row[2].endswith("[speed]") for row in verdicts["body"])
    assert all(row[2].endswith(("[smoke]", "[speed]")) for row in verdicts["body"])
    editions = page["tables"]["editions"]["body"]
    assert editions[0][0] == "smoke" and editions[0][4] == "4"  # two towers, two seeds each
    assert editions[1][0] == "speed" and editions[1][1] == "NVIDIA H200"


def test_the_numbers_in_the_tables_are_the_run_files(pages, smoke_study):
    results = smoke_study["results"]
    metrics = {e: [json.loads((results / e / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
               for e in ("mambavision", "swin")}
    # the discussion's Table 1: each tower's mean ± SD over its seeds' metrics.json
    discussion = pages["pages"]["book/executed/smoke/05_discussion.html"]
    table1 = discussion["tables"]["table-1"]
    header = table1["head"][0]
    rows = {row[0]: row for row in table1["body"]}
    for encoder, label in (("mambavision", "MVLIP"), ("swin", "CLIP(Swin)")):
        for key, name in tables.TABLE1_METRICS.items():
            values = [m[key] for m in metrics[encoder]]
            assert rows[name][header.index(label)] == mean_sd(v for v in values if v is not None), (encoder, key)
    assert any("random weights" in box.lower() for box in discussion["boxes"]), discussion["boxes"]
    # its Table 2: our throughput the paper's way and alone, from each encoder's benchmark.json
    table2 = discussion["tables"]["table-2"]
    header2 = table2["head"][0]
    for encoder, label in (("mambavision", "MVLIP"), ("swin", "CLIP(Swin)")):
        records = json.loads((results / encoder / "benchmark.json").read_text())["records"]
        loop = next(r for r in records if r["kind"] == "eval_loop" and r["source"] == "jpeg")
        alone = next(r for r in records if r["kind"] == "model_only" and r["setting"] == "paper's conditions"
                     and r["mode"] == "inference")
        row = next(r for r in table2["body"] if r[0] == label)
        assert row[header2.index("ours, paper's method")] == f"{loop['images_per_s']:.0f}"
        assert row[header2.index("ours, towers alone")] == f"{alone['images_per_s']:.0f}"
        assert row[header2.index("paper")] == f"{paper_reference()['table2_throughput_images_per_s'][encoder]:.0f}"
        # each evaluation chapter: every seed's accuracy
        seeds = pages["pages"][f"book/executed/smoke/{encoder}/03_evaluate.html"]["tables"]["seeds"]
        accuracy = seeds["head"][0].index("accuracy")
        assert [r[accuracy] for r in seeds["body"][:2]] == [f"{m['accuracy']:.4f}" for m in metrics[encoder]]
    # the findings' paired tests: McNemar's p of each seed, from the per-image results
    tests = pages["pages"]["book/executed/00_findings.html"]["tables"]["table1-tests"]["body"]
    for seed, row in zip((0, 1), tests[:2]):  # the accuracy rows come first
        a, b = (pd.read_csv(results / e / f"seed-{seed}" / run_folder.PER_IMAGE)["correct"].to_numpy(dtype=bool)
                for e in ("mambavision", "swin"))
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        p = scipy_stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        assert row[-5:] == [str(seed), f"{(only_a - only_b) / len(a):+.4f}", "McNemar exact", f"p = {p:.3g}",
                            "yes" if p < 0.05 else "no"]
