"""Reading the report back: its tables (cell text and data-* attributes) and its images."""

from __future__ import annotations

import base64
import csv
import math
import statistics
from html.parser import HTMLParser
from pathlib import Path


class _Tables(HTMLParser):
    """Collects every <table id=...> as header texts and rows of cells {text, attrs}."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.images: list[dict[str, str]] = []
        self._table: dict | None = None
        self._cell: dict | None = None
        self._row: list | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs.items()})
        elif tag == "table" and attrs.get("id"):
            self._table = {"header": [], "rows": []}
            self.tables[attrs["id"]] = self._table
        elif self._table is not None and tag == "tr":
            self._row = []
        elif self._table is not None and tag in ("td", "th"):
            self._cell = {"tag": tag, "attrs": {k: v or "" for k, v in attrs.items()}, "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if all(c["tag"] == "th" for c in self._row):
                self._table["header"] = [c["text"] for c in self._row]
            else:
                self._table["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def parse_report(html: str) -> tuple[dict[str, dict], list[dict[str, str]]]:
    """({table id: {header: [...], rows: [[cell, ...], ...]}}, [img attrs, ...])."""
    parser = _Tables()
    parser.feed(html)
    return parser.tables, parser.images


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:60]
    return head[5:-7], base64.b64decode(payload, validate=True)


def read_metrics_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [{**r, "psnr": float(r["psnr"]), "ssim": float(r["ssim"]), "data_range": float(r["data_range"])}
            for r in rows]


def shown(value: float, digits: int, signed: bool = False) -> str:
    """How the report prints a number (its minus sign is U+2212)."""
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "\u2212")


def check_report_matches_metrics(html: str, rows: list[dict]) -> None:
    """Assert the report's metric tables hold exactly the numbers of ``rows`` (metrics.tsv).

    Per subject: PSNR, SSIM and the gain over spline, both the exact value in
    data-value and the rounded text. Per method: n, mean, sd (n - 1), median
    of PSNR, SSIM and gain, recomputed here from ``rows``.
    """
    tables, _ = parse_report(html)
    per_subject = tables["metrics-per-subject"]
    assert per_subject["header"][:4] == ["subject", "method", "PSNR (dB)", "SSIM"]
    by_key = {(r["subject"], r["method"]): r for r in rows}
    spline = {r["subject"]: r["psnr"] for r in rows if r["method"] == "spline"}
    seen = set()
    for cells in per_subject["rows"]:
        subject, method = cells[0]["text"], cells[1]["text"]
        expected = by_key[(subject, method)]
        seen.add((subject, method))
        for cell, key, digits in ((cells[2], "psnr", 2), (cells[3], "ssim", 4)):
            assert float(cell["attrs"]["data-value"]) == expected[key], (subject, method, key)
            assert cell["text"] == shown(expected[key], digits), (subject, method, key, cell["text"])
        if method != "spline":
            gain = expected["psnr"] - spline[subject]
            assert float(cells[4]["attrs"]["data-value"]) == gain, (subject, method)
            assert cells[4]["text"] == shown(gain, 2, signed=True)
    assert seen == set(by_key), "every (subject, method) of metrics.tsv is in the report, and no other"

    summary = tables["metrics-summary"]
    methods = [cells[0]["text"] for cells in summary["rows"]]
    assert sorted(methods) == sorted({r["method"] for r in rows})
    for cells in summary["rows"]:
        method = cells[0]["text"]
        mine = [r for r in rows if r["method"] == method]
        assert int(cells[1]["attrs"]["data-value"]) == len(mine)
        checks = [(cells[2], cells[3], [r["psnr"] for r in mine], 2, False),
                  (cells[4], cells[5], [r["ssim"] for r in mine], 4, False)]
        if method != "spline":
            checks.append((cells[6], cells[7], [r["psnr"] - spline[r["subject"]] for r in mine], 2, True))
        for mean_cell, median_cell, values, digits, signed in checks:
            mean = statistics.fmean(values)
            assert math.isclose(float(mean_cell["attrs"]["data-mean"]), mean, rel_tol=0, abs_tol=1e-12)
            assert mean_cell["text"].startswith(shown(mean, digits, signed)), (method, mean_cell["text"])
            if len(values) > 1:
                sd = statistics.stdev(values)
                assert math.isclose(float(mean_cell["attrs"]["data-sd"]), sd, rel_tol=1e-12)
                assert mean_cell["text"].endswith("\u00b1 " + shown(sd, digits)), (method, mean_cell["text"])
            else:
                assert mean_cell["attrs"]["data-sd"] == ""
            median = statistics.median(values)
            assert math.isclose(float(median_cell["attrs"]["data-value"]), median, rel_tol=0, abs_tol=1e-12)
            assert median_cell["text"] == shown(median, digits, signed), (method, median_cell["text"])
