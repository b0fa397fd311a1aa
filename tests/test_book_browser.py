"""End to end: a minimal smoke study through papermill, the book built with jupyter-book (warnings are
errors), and its discussion page opened in real headless Chromium (Debian's, installed by
scripts/setup_env.sh): both tables are there, every figure has loaded, and Table 1 shows the number that
is in the run's metrics.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvlip_utils import discussion, study

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

# As small as the study gets: one encoder, one epoch, 4 classes x 8 training images, a short benchmark.
TINY = {"epochs": 1, "generated_classes": 4, "generated_train_per_class": 8, "generated_val_per_class": 4,
        "batch_size": 16, "eval_batch_size": 16, "warmup": 1, "repeats": 2, "eval_repeats": 1,
        "resolutions": [32, 64], "n_examples": 4}
ENCODERS = ["vit"]


def copy_book_sources(dest: Path) -> Path:
    """The book's sources (config, intro, notebooks) in a folder of their own, so the test's data,
    results and build stay out of the repository."""
    (dest / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", dest / "_config.yml")
    shutil.copy(ROOT / "book" / "intro.md", dest / "book" / "intro.md")
    shutil.copytree(ROOT / "notebooks", dest / "notebooks")
    return dest


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
IMAGES_JS = """
return Array.from(document.querySelectorAll('article img, main img')).map(
  i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
"""


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_smoke_book_discussion_in_headless_chromium(tmp_path):
    root = copy_book_sources(tmp_path / "book-root")
    report = study.run_study("smoke", ENCODERS, overrides=TINY, root=root, log=print)
    assert [status for _, status, _ in report["steps"]] == ["executed"] * (2 + 3 * len(ENCODERS))
    html = report["html"]
    page = html / "book" / "executed" / "smoke" / "05_discussion.html"
    assert page.is_file(), f"the book has no discussion page: {sorted(p.name for p in html.rglob('*.html'))}"
    for chapter in ("book/intro.html", "book/executed/smoke/01_setup.html",
                    *(f"book/executed/smoke/{e}/{nb}.html" for e in ENCODERS for nb in study.PER_ENCODER)):
        assert (html / chapter).is_file(), f"missing chapter {chapter}"
    metrics = json.loads((root / "results" / "smoke" / "vit" / "metrics.json").read_text())

    driver = headless_chromium(tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert "Discussion" in driver.title

        table1 = driver.execute_script(TABLE_JS, "table-1")
        table2 = driver.execute_script(TABLE_JS, "table-2")
        verdicts = driver.execute_script(TABLE_JS, "verdicts")
        assert table1 and table2 and verdicts, "a table is missing from the rendered discussion"
        assert len(table1["body"]) == 9 and len(table2["body"]) == 3

        # Table 1 shows the run's own numbers from metrics.json (4 decimals), the paper's beside them
        header = table1["head"][0]
        column = header.index("ours CLIP(ViT)")
        rows = {r[0]: r for r in table1["body"]}
        for key, label in discussion.TABLE1_METRICS.items():  # top5 is null with TINY's four classes: a dash
            assert rows[label][column] == ("–" if metrics[key] is None else f"{metrics[key]:.4f}"), key
        assert rows["Accuracy"][header.index("paper MVLIP")] == "0.7466"
        # Table 2: our throughput measured the paper's way, from benchmark.json
        bench = discussion.benchmark_numbers(json.loads((root / "results" / "smoke" / "vit" / "benchmark.json").read_text()))
        header2 = table2["head"][0]
        vit_row = next(r for r in table2["body"] if r[0] == discussion.ENCODER_LABELS["vit"])
        assert vit_row[header2.index(f"ours, {discussion.BENCH_METHODS['eval_loop']}: images/s")] == f"{bench['eval_loop']:.1f}"
        assert vit_row[header2.index(f"ours, {discussion.BENCH_METHODS['model_only']}: images/s")] == f"{bench['model_only']:.1f}"
        # the smoke profile says plainly that it proves nothing about the paper
        assert all(r[-1].startswith(("no verdict", "not measured")) for r in verdicts["body"])
        body_text = driver.find_element("tag name", "body").text
        assert "random-weight smoke numbers" in body_text
        assert "neither confirm nor refute the paper" in body_text

        images = driver.execute_script(IMAGES_JS)
        assert images, "no figure on the discussion page"
        broken = [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
        assert not broken, f"figures that did not load: {broken}"
    finally:
        driver.quit()
