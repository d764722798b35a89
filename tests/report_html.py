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
    return [{**r, **{key: float(r[key]) for key in (*DIGITS.keys() - {"gain", "gain_interior"}, "data_range")}}
            for r in rows]


def shown(value: float, digits: int, signed: bool = False) -> str:
    """How the report prints a number (its minus sign is U+2212)."""
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "\u2212")


SUBJECT_COLUMNS = (("psnr_interior", 2), ("ssim_interior", 4), ("gain_interior", 2), ("psnr", 2), ("ssim", 4),
                   ("gain", 2), ("hfen", 4))  # the per-subject table's columns after subject and method
SUMMARY_COLUMNS = {2: "psnr_interior", 3: "ssim_interior", 4: "gain_interior", 6: "psnr", 7: "ssim", 8: "gain",
                   10: "hfen"}  # the summary table's mean +- sd cells by column
DIGITS = {"psnr": 2, "psnr_interior": 2, "gain": 2, "gain_interior": 2, "ssim": 4, "ssim_interior": 4, "hfen": 4}


def _with_gains(rows: list[dict]) -> list[dict]:
    """The rows with gain and gain_interior over the subject's spline row (None for spline itself)."""
    spline = {r["subject"]: r for r in rows if r["method"] == "spline"}
    return [{**r, **{f"gain{suffix}": None if r["method"] == "spline"
                     else r[f"psnr{suffix}"] - spline[r["subject"]][f"psnr{suffix}"] for suffix in ("", "_interior")}}
            for r in rows]


def check_report_matches_metrics(html: str, rows: list[dict]) -> None:
    """Assert the report's metric tables hold exactly the numbers of ``rows`` (metrics.tsv).

    Per subject: interior and whole-mask PSNR, SSIM and gain over spline, and
    HFEN, both the exact value in data-value and the rounded text. Per method:
    n, and the mean and sd (n - 1) of each, recomputed here from ``rows``.
    """
    tables, _ = parse_report(html)
    rows = _with_gains(rows)
    per_subject = tables["metrics-per-subject"]
    assert per_subject["header"][:3] == ["subject", "method", "interior PSNR (dB)"]
    by_key = {(r["subject"], r["method"]): r for r in rows}
    seen = set()
    for cells in per_subject["rows"]:
        subject, method = cells[0]["text"], cells[1]["text"]
        expected = by_key[(subject, method)]
        seen.add((subject, method))
        for cell, (key, digits) in zip(cells[2:], SUBJECT_COLUMNS):
            if expected[key] is None:
                assert cell["text"] == "baseline", (subject, method, key)
                continue
            assert float(cell["attrs"]["data-value"]) == expected[key], (subject, method, key)
            assert cell["text"] == shown(expected[key], digits, signed=key.startswith("gain")), (subject, method, key)
    assert seen == set(by_key), "every (subject, method) of metrics.tsv is in the report, and no other"

    summary = tables["metrics-summary"]
    methods = [cells[0]["text"] for cells in summary["rows"]]
    assert sorted(methods) == sorted({r["method"] for r in rows})
    for cells in summary["rows"]:
        method = cells[0]["text"]
        mine = [r for r in rows if r["method"] == method]
        assert int(cells[1]["attrs"]["data-value"]) == len(mine)
        for column, key in SUMMARY_COLUMNS.items():
            if method == "spline" and key.startswith("gain"):
                continue
            values, digits, signed = [r[key] for r in mine], DIGITS[key], key.startswith("gain")
            mean_cell = cells[column]
            mean = statistics.fmean(values)
            assert math.isclose(float(mean_cell["attrs"]["data-mean"]), mean, rel_tol=0, abs_tol=1e-12), (method, key)
            assert mean_cell["text"].startswith(shown(mean, digits, signed)), (method, key, mean_cell["text"])
            if len(values) > 1:
                sd = statistics.stdev(values)
                assert math.isclose(float(mean_cell["attrs"]["data-sd"]), sd, rel_tol=1e-12)
                assert mean_cell["text"].endswith("\u00b1 " + shown(sd, digits)), (method, mean_cell["text"])
            else:
                assert mean_cell["attrs"]["data-sd"] == ""
