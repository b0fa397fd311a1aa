"""End to end: a minimal smoke study through papermill, the book built with jupyter-book (warnings are
errors), and the book opened in real headless Chromium (Debian's, installed by scripts/setup_env.sh) at
1400 px, as a reader sees it: the findings chapter right after the introduction with a verdict for every
claim, the discussion's tables, no code input visible unless unfolded, no table wider than its column,
every figure loaded, and the numbers shown equal to the run files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvlip_utils.report import discussion
from mvlip_utils.settings import notebooks
from mvlip_utils.study import runner as study

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

# As small as the study gets: one encoder, one epoch, 4 classes x 8 training images, a short benchmark.
TINY = {"epochs": 1, "generated_classes": 4, "generated_train_per_class": 8, "generated_val_per_class": 4,
        "batch_size": 16, "eval_batch_size": 16, "warmup": 1, "repeats": 2, "eval_repeats": 1,
        "resolutions": [32, 64], "n_examples": 4, "step_check_images": 16, "best_batch": 8, "sweep_batch": 8}
ENCODERS = ["vit"]


def copy_book_sources(dest: Path) -> Path:
    """The book's sources (config, intro, notebooks) in a folder of their own, so the test's data,
    results and build stay out of the repository."""
    (dest / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", dest / "_config.yml")
    shutil.copy(ROOT / "index.md", dest / "index.md")
    shutil.copytree(ROOT / "notebooks", dest / "notebooks")
    shutil.copytree(ROOT / "_static", dest / "_static")
    return dest


def reader_view(driver) -> dict:
    """What a reader of the open page sees: code inputs shown without unfolding, tables wider than the
    article column, the admonition boxes' text."""
    seen = driver.execute_script(READER_JS)
    seen["visible"] = sum(c.is_displayed() for c in driver.find_elements("css selector", "div.cell_input"))
    return seen


def headless_chromium(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: run scripts/setup_env.sh (installs Debian's chromium)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


TABLE_JS = """
const t = document.getElementById(arguments[0]);
if (!t) return null;
const head = Array.from(t.querySelectorAll('thead tr')).map(r => Array.from(r.cells).map(c => c.innerText.trim()));
const body = Array.from(t.querySelectorAll('tbody tr')).map(r => Array.from(r.cells).map(c => c.innerText.trim()));
return {head: head, body: body};
"""
NAV_JS = """
const seen = new Set(); const out = [];
for (const a of document.querySelectorAll('nav a')) {
  const t = a.textContent.trim(), h = a.href.split('#')[0];
  if (t && h.endsWith('.html') && !seen.has(h)) { seen.add(h); out.push([t, h]); }
}
return out;
"""
READER_JS = """
const art = document.querySelector('article.bd-article') || document.querySelector('main');
const right = art.getBoundingClientRect().right;
const wide = [...document.querySelectorAll('article table, main table')].filter(
  t => t.scrollWidth > t.parentElement.clientWidth + 2 || t.getBoundingClientRect().right > right + 2).length;
const boxes = [...document.querySelectorAll('div.admonition')].map(d => d.innerText);
return {wide: wide, boxes: boxes};
"""
IMAGES_JS = """
return Array.from(document.querySelectorAll('article img, main img')).map(
  i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_book_as_a_reader_sees_it_in_headless_chromium(tmp_path):
    from mvlip_utils.report import findings
    from mvlip_utils.train import results

    root = copy_book_sources(tmp_path / "book-root")
    report = study.run_study("smoke", ENCODERS, overrides=TINY, root=root, log=print)
    assert [status for _, status, _ in report["steps"]] == ["executed"] * (3 + 3 * len(ENCODERS))
    html = report["html"]
    page = html / "book" / "executed" / "smoke" / "05_discussion.html"
    findings_page = html / "book" / "executed" / "00_findings.html"
    for chapter in ("index.html", "book/executed/00_findings.html", "book/executed/smoke/01_setup.html",
                    *(f"book/executed/smoke/{e}/{nb}.html" for e in ENCODERS for nb in notebooks.PER_ENCODER)):
        assert (html / chapter).is_file(), f"missing chapter {chapter}"
    run = root / "results" / "smoke" / "vit"
    metrics = json.loads((run / "metrics.json").read_text())
    bench = results.read_benchmark(run / "benchmark.json")["records"]

    driver = headless_chromium(tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(60)
        # the findings are one click from the start: the navigation entry right after the introduction
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get((html / "index.html").as_uri())  # the introduction
        WebDriverWait(driver, 20).until(lambda d: len(d.execute_script(NAV_JS)) > 2)
        nav = driver.execute_script(NAV_JS)
        assert "finding" in nav[1][0].lower(), nav[:3]

        driver.get(findings_page.as_uri())
        verdicts = driver.execute_script(TABLE_JS, "claims-verdicts")
        assert verdicts and verdicts["head"][0][-2:] == ["verdict", "reason"]
        assert len(verdicts["body"]) == len(findings.paper_claims(results.paper_reference())) >= 5
        assert all(row[-2] in findings.VERDICTS for row in verdicts["body"])
        assert all(row[-2] == "no verdict" for row in verdicts["body"])  # a smoke edition judges nothing
        seen = reader_view(driver)
        assert seen["visible"] == 0 and seen["wide"] == 0, seen

        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert "Discussion" in driver.title
        seen = reader_view(driver)
        assert seen["visible"] == 0, f"{seen['visible']} code inputs visible on the discussion page"
        assert seen["wide"] == 0, f"{seen['wide']} table(s) wider than the article column"
        assert any("random weights" in box.lower() for box in seen["boxes"]), seen["boxes"]  # the warning box
        table1 = driver.execute_script(TABLE_JS, "table-1")
        table2 = driver.execute_script(TABLE_JS, "table-2")
        assert table1 and table2 and len(table1["body"]) == 9 and len(table2["body"]) == 3

        # Table 1 shows the run's own numbers from metrics.json (4 decimals), the paper's beside them
        header = table1["head"][0]
        column = header.index("ours CLIP(ViT)")
        rows = {r[0]: r for r in table1["body"]}
        for key, label in discussion.TABLE1_METRICS.items():
            value = metrics[key]
            assert rows[label][column] == ("–" if value is None else f"{value:.4f}"), key
        assert rows["Accuracy"][header.index("paper MVLIP")] == "0.7466"
        # Table 2: our throughput the paper's way and alone, from benchmark.json
        header2 = table2["head"][0]
        vit_row = next(r for r in table2["body"] if r[0] == discussion.ENCODER_LABELS["vit"])
        loop = discussion.find(bench, kind="eval_loop", source="jpeg")["images_per_s"]
        alone = discussion.find(bench, kind="model_only", setting="paper's conditions", mode="inference")["images_per_s"]
        assert vit_row[header2.index("ours, paper's method (images/s)")] == f"{loop:.1f}"
        assert vit_row[header2.index("ours, model only (images/s)")] == f"{alone:.1f}"

        images = driver.execute_script(IMAGES_JS)
        assert images, "no figure on the discussion page"
        broken = [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
        assert not broken, f"figures that did not load: {broken}"
    finally:
        driver.quit()
