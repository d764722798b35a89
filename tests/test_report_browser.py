"""The report of the tiny end-to-end run: its numbers against metrics.tsv, and both reports in a real browser.

The browser is headless Chromium driven over the DevTools protocol
(``browser.py``). Screenshots are written next to the report
(``results/report/screenshot.png``, ``results/report/snakemake_report.png``)
and, when ``$MRISR_TEST_ARTIFACTS`` names a folder (CI sets it to
``results/test-artifacts``), copied there with both HTML files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import Chromium, find_chromium
from conftest import run_snakemake
from report_html import check_report_matches_metrics, parse_report, read_metrics_tsv

pytestmark = pytest.mark.slow

# What report(...) marks in the workflow, per tiny run (2 stages, 1 test subject):
# collect_metrics 1, train_stage 2 x (log, loss plot), plot_slices 1 x (panels, sweep), report 6.
CATEGORIES = ("Evaluation", "Training", "Super-resolution", "Diffusion model", "Cost", "Report")

IMAGES_DECODED = """
Promise.all([...document.images].map(img => img.decode().then(
    () => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, ok: true}),
    err => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, ok: false, error: String(err)}))))
"""

TABLES_SHOWN = """
["metrics-summary", "metrics-per-subject"].map(id => {
    const t = document.getElementById(id);
    if (!t) return {id, rows: 0, height: 0};
    return {id, rows: t.tBodies[0].rows.length, height: t.getBoundingClientRect().height};
})
"""

# Every image Snakemake embedded in its report, decoded by the browser.
SNAKEMAKE_RESULTS_DECODED = """
Promise.all(Object.values(results).map(r => {
    if (!r.mime_type.startsWith("image/")) return Promise.resolve({name: r.name, mime: r.mime_type, image: false});
    const img = new Image();
    img.src = r.data_uri;
    return img.decode().then(
        () => ({name: r.name, mime: r.mime_type, image: true, width: img.naturalWidth}),
        err => ({name: r.name, mime: r.mime_type, image: true, width: 0, error: String(err)}));
}))
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; or set MRISR_CHROMIUM)")
    return exe


def keep_artifact(path: Path) -> None:
    folder = os.environ.get("MRISR_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / path.name)


def assert_not_blank(png: Path, min_height: int) -> None:
    shot = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert shot.shape[0] >= min_height, f"{png}: only {shot.shape[0]} px tall"
    assert shot.std() > 10, f"{png} is (nearly) one colour"


def test_report_numbers_equal_metrics_tsv(tiny_run):
    res = tiny_run / "results"
    html = (res / "report" / "index.html").read_text(encoding="utf-8")
    check_report_matches_metrics(html, read_metrics_tsv(res / "metrics.tsv"))


def test_reports_render_in_chromium(tiny_run, chromium, tmp_path):
    workdir = tmp_path / "copy"  # the tiny run is shared: its Snakemake report and screenshots go to a copy
    shutil.copytree(tiny_run, workdir, symlinks=True)
    res = workdir / "results"
    index = res / "report" / "index.html"
    _, static_images = parse_report(index.read_text(encoding="utf-8"))
    smk_report = res / "report" / "snakemake_report.html"
    run_snakemake(workdir, "--report", str(smk_report))

    with Chromium(chromium) as browser:
        page = browser.open(index.as_uri())
        images = page.evaluate(IMAGES_DECODED)
        assert len(images) == len(static_images) >= 5, "metrics, slice panels, sweep, loss, schedule"
        broken = [i for i in images if not (i["ok"] and i["width"] > 0 and i["height"] > 0)]
        assert not broken, f"images that did not decode: {broken}"
        alts = {i["alt"] for i in images}
        assert {"metric distribution by method", "loss curves", "noise schedule"} <= alts
        assert any(a.startswith("slice panels") for a in alts) and any(a.startswith("slice sweep") for a in alts)
        n_rows = len(read_metrics_tsv(res / "metrics.tsv"))
        shown = {t["id"]: t for t in page.evaluate(TABLES_SHOWN)}
        assert shown["metrics-per-subject"]["rows"] == n_rows and shown["metrics-per-subject"]["height"] > 0
        assert shown["metrics-summary"]["rows"] >= 2 and shown["metrics-summary"]["height"] > 0
        requested = page.requested_urls()
        assert all(u.startswith(("file:", "data:")) for u in requested), f"the page fetched: {requested}"
        assert page.errors() == []
        shot = res / "report" / "screenshot.png"
        page.screenshot(shot)
        assert_not_blank(shot, min_height=2000)

        page = browser.open(smk_report.as_uri())
        text = page.wait_for("document.body && document.body.innerText.includes('Super-resolution') "
                             "&& document.body.innerText")
        assert text, "Snakemake's report did not render its categories"
        for category in CATEGORIES:
            assert category in text, f"category {category!r} missing from Snakemake's report"
        results = page.evaluate(SNAKEMAKE_RESULTS_DECODED)
        names = sorted(r["name"] for r in results)
        assert len(results) == 1 + 2 * 2 + 2 + 6, names
        images = [r for r in results if r["image"]]
        assert len(images) == 2 + 2 + 3 and all(r["width"] > 0 for r in images), json.dumps(images)
        assert {"index.html", "metrics.tsv", "cost.tsv", "summary.tsv"} <= set(names)
        assert page.errors() == []
        smk_shot = res / "report" / "snakemake_report.png"
        page.screenshot(smk_shot)
        assert_not_blank(smk_shot, min_height=500)

    for path in (shot, smk_shot, index, smk_report):
        keep_artifact(path)
