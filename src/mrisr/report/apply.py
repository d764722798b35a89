"""The QC page of apply mode: what the cascade did to each scan, with no HR volume to score it against.

``qc_figures`` draws one scan's slice panels (its LR as acquired, drawn as
its own voxels; SR; the samples' sd) with ``slices.slice_panel_figure`` and
a small axial thumbnail; ``build_apply_report`` puts every scan's thumbnail,
the large panels of the first ``panels_max`` scans, the voxel-size
warnings, the model's provenance and the cost into one self-contained page
(``page.page``: images embedded, no scripts, nothing fetched).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import mrisr.report.page as page
import mrisr.report.provenance as provenance
import mrisr.report.slices as slices
import mrisr.report.tables as tables
from mrisr.data.degrade import factor_label
from mrisr.io import atomic_path, load_volume
from mrisr.report.figures import write_bytes

HEAD_FRACTION = 0.1  # voxels brighter than this share of the display range are the head (for the slices' centre)


def qc_volumes(scan: tuple[np.ndarray, np.ndarray], sr: tuple[np.ndarray, np.ndarray],
               sd: tuple[np.ndarray, np.ndarray] | None = None) -> slices.Volumes:
    """LR (nearest onto the SR grid), SR and sd in RAS+ orientation, divided by the scan's 99.5th percentile
    so the images share the display range [0, 1]; the head (not the brain) centres the slices."""
    sr_ras, spacing = slices.to_ras(*sr)
    lr_ras = slices.to_ras(*scan)[0]
    scale = float(np.percentile(scan[0], 99.5)) or 1.0
    images = {"LR": slices.nearest_to_grid(lr_ras, sr_ras.shape) / scale, "SR": sr_ras / scale}
    maps = {} if sd is None else {"SR": slices.to_ras(*sd)[0] / scale}
    head = images["SR"] > HEAD_FRACTION
    return slices.Volumes(images, maps, head, spacing, slices.ratio_label(sr_ras.shape, lr_ras.shape),
                          map_title="sd of the {} samples", map_label="sd of the samples (display scale)")


def thumbnail(vols: slices.Volumes, height: int = 120) -> bytes:
    """A PNG of the axial slice through the head's centre: LR (its voxels), SR and, if drawn, the sd map."""
    from PIL import Image

    index = slices.centre_slices(vols.mask)[2]
    tiles = [np.flipud(slices.take(v, 2, index)) for v in (*vols.images.values(), *vols.errors.values())]
    if vols.errors:  # the sd map on its own scale, as in the panels
        sd = tiles[-1]
        tiles[-1] = sd / (float(np.percentile(sd[sd > 0], 99.5)) if (sd > 0).any() else 1.0)
    rows, cols = tiles[0].shape
    width = max(1, round(height * cols * vols.spacing[0] / (rows * vols.spacing[1])))
    canvas = Image.new("L", (len(tiles) * (width + 2) - 2, height), color=0)
    for k, tile in enumerate(tiles):
        grey = (np.clip(tile, 0.0, 1.0) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(grey).resize((width, height), Image.BILINEAR), (k * (width + 2), 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def qc_figures(scan_path: str, sr_path: str, sd_path: str | None, title: str, out_panels: str, out_thumb: str) -> None:
    """One scan's slice panels and thumbnail for the QC page."""
    vols = qc_volumes(load_volume(scan_path), load_volume(sr_path), load_volume(sd_path) if sd_path else None)
    write_bytes(out_panels, slices.slice_panel_figure(vols, title=title))
    write_bytes(out_thumb, thumbnail(vols))


@dataclass(frozen=True)
class ApplyReportInputs:
    """What the QC page is built from.

    ``scans`` maps each scan's name (``sub-01_ses-1``) to its SR sidecar
    (JSON), panels PNG and thumbnail PNG; ``model_config`` is the first
    checkpoint's training config; ``benchmarks`` the apply jobs' Snakemake
    benchmark files; ``repo_dir`` the checkout, for its git state.
    """

    scans: Mapping[str, tuple[str, str, str]]
    config: Mapping
    model_config: Mapping
    checkpoints: Sequence[str]
    benchmarks: Sequence[str] = ()
    panels_max: int = 20
    repo_dir: str | None = None


def _sidecars(inputs: ApplyReportInputs) -> dict[str, dict]:
    return {name: json.loads(Path(files[0]).read_text(encoding="utf-8")) for name, files in sorted(inputs.scans.items())}


def lead_html(sidecars: Mapping[str, Mapping], trained_mm: Sequence[float] | None) -> str:
    factors = sorted({factor_label(s["ScaleFactor"]) for s in sidecars.values()})
    warned = [n for n, s in sidecars.items() if s.get("VoxelSizeWarning")]
    trained = f"{'×'.join(f'{v:g}' for v in trained_mm)} mm" if trained_mm else "not recorded in the checkpoint"
    return (f'<p class="lead">{len(sidecars)} scan{"s" if len(sidecars) != 1 else ""} super-resolved '
            f"×{'/'.join(map(str, factors))} by the cascade below (training LR voxel size {trained}). "
            f"<b>There is no PSNR, SSIM or HFEN here</b>: apply mode has no high-resolution scan to compare with, "
            f"so this page shows what the cascade did to each scan, not how well; the training run's report "
            f"measured that on its held-out test subjects. <b>{len(warned)}</b> scan"
            f"{'s have' if len(warned) != 1 else ' has'} a voxel size more than 25 % from the training LR's "
            f'(<a href="#voxels">voxel sizes</a>).</p>')


def voxels_section(sidecars: Mapping[str, Mapping]) -> str:
    def mm(values) -> str:
        return "×".join(f"{v:.3g}" for v in values) if values else "n/a"

    rows = [[name, mm(s.get("InputVoxelSize")), mm(s.get("VoxelSize")),
             f'<td class="text{" neg" if s.get("VoxelSizeWarning") else ""}">'
             f'{page.esc(s.get("VoxelSizeWarning") or "within 25 % of the training LR")}</td>']
            for name, s in sidecars.items()]
    return "".join([
        '<h2 id="voxels">Voxel sizes</h2>',
        '<p class="note">Each scan\'s voxel size against the voxel size of the LR the cascade was trained on '
        "(<code>mrisr super-resolve</code>'s check: more than 25 % off on any axis gives a warning, also in the "
        "scan's job log and its sidecar's <code>VoxelSizeWarning</code>). A cascade applied to another "
        "resolution than it learned may produce poor results.</p>",
        page.table(["scan", "input voxel (mm)", "output voxel (mm)", "voxel-size check"], rows, "voxel-sizes",
                   text_cols=4),
    ])


def thumbnails_section(inputs: ApplyReportInputs, sidecars: Mapping[str, Mapping]) -> str:
    cells = []
    for name in sidecars:
        png = Path(inputs.scans[name][2]).read_bytes()
        flag = " ⚠" if sidecars[name].get("VoxelSizeWarning") else ""
        cells.append(f'<figure style="display:inline-block;margin:.3em .6em .3em 0">'
                     f'<img src="{page.data_uri(png, "image/png")}" alt="thumbnail {page.esc(name)}">'
                     f"<figcaption>{page.esc(name)}{flag}</figcaption></figure>")
    return "".join([
        '<h2 id="thumbnails">All scans</h2>',
        '<p class="note">Axial slice through the centre of each head: the scan as acquired (LR, drawn as its own '
        "voxels), SR and, with several samples, the samples' sd (its own scale). ⚠: a voxel-size warning.</p>",
        '<div id="thumbnails-grid">', *cells, "</div>",
    ])


def panels_section(inputs: ApplyReportInputs, names: Sequence[str]) -> str:
    shown = list(names)[: inputs.panels_max]
    parts = ['<h2 id="panels">Slice panels</h2>',
             f'<p class="note">Shown: {len(shown)} of {len(names)} scans (the first {inputs.panels_max} by name; '
             "every scan's panels are in <code>results/report/apply/</code>). Axial, coronal and sagittal slices "
             "through the centre of the head, in neurological convention. LR and SR share one intensity scale "
             "(the scan's 99.5th percentile is 1); the sd map has its own. The yellow box marks the region "
             "magnified in each inset.</p>"]
    for name in shown:
        png = Path(inputs.scans[name][1]).read_bytes()
        parts.append(f"<h3>{page.esc(name)}</h3>")
        parts.append(page.figure(page.data_uri(png, "image/png"), f"slice panels {name}", page.esc(name)))
    return "".join(parts)


def model_section(inputs: ApplyReportInputs, sidecars: Mapping[str, Mapping]) -> str:
    first = next(iter(sidecars.values()))
    rows = [[c["Path"], f'<td class="text"><code>{page.esc(c["SHA256"])}</code></td>',
             f'<td data-value="{c["Stage"]}">{c["Stage"]}</td>', f'<td data-value="{c["Factor"]}">×{c["Factor"]}</td>']
            for c in first["Checkpoints"]]
    figures = []
    for path in inputs.checkpoints:
        folder = Path(path).parent
        for name in ("loss.png", "train_log.tsv"):
            found = (folder / name).is_file()
            figures.append(f"<li><code>{page.esc(folder / name)}</code>{'' if found else ' (not found)'}</li>")
    run_report = Path(inputs.checkpoints[0]).parent.parent.parent / "report" / "index.html"
    figures.append(f"<li>the training run's report: <code>{page.esc(run_report)}</code>"
                   f"{'' if run_report.is_file() else ' (not found beside the checkpoints)'}</li>")
    trained = page.to_yaml(provenance.redact(dict(inputs.model_config)))
    sampling = page.to_yaml(first.get("Sampling", {}))
    return "".join([
        '<h2 id="model">Model</h2>',
        page.table(["checkpoint", "SHA-256", "stage", "factor"], rows, "checkpoints", text_cols=1),
        f"<p>Normalisation: the checkpoints' <code>degrade.protocol</code> is "
        f"<b>{page.esc(first.get('NormalisationProtocol', '?'))}</b>. Its training figures and tables:</p>",
        f"<ul>{''.join(figures)}</ul>",
        "<details><summary>Sampling settings of this run</summary>",
        f'<pre id="sampling">{page.esc(sampling)}</pre></details>',
        "<details><summary>The model's training configuration (from the first checkpoint)</summary>",
        f'<pre id="model-config">{page.esc(trained)}</pre></details>',
    ])


def provenance_html(inputs: ApplyReportInputs) -> str:
    versions = provenance.package_versions()
    kv = [
        ("generated", page.esc(provenance.utc_now())),
        ("code", f"mrisr {page.esc(versions.get('mrisr', '?'))}, git commit "
                 f"<code>{page.esc(provenance.git_state(inputs.repo_dir))}</code>"),
        ("data source", f"<b>{page.esc(inputs.config.get('source', '?'))}</b>"),
        ("packages", ", ".join(f"{page.esc(k)} {page.esc(v)}" for k, v in versions.items())),
        ("environment", page.environment_html(provenance.lock_check(inputs.repo_dir))),
    ]
    config_yaml = page.to_yaml(provenance.redact(dict(inputs.config)))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in kv)
    return "".join([
        '<h2 id="provenance">Provenance</h2>',
        f'<table class="kv" id="provenance-table"><tbody>{rows}</tbody></table>',
        "<details><summary>Resolved configuration (secret-looking keys redacted)</summary>",
        f'<pre id="config">{page.esc(config_yaml)}</pre></details>',
    ])


def build_apply_report(inputs: ApplyReportInputs, out_html: str) -> None:
    """Write the QC page (see the module doc)."""
    sidecars = _sidecars(inputs)
    if not sidecars:
        raise ValueError("no scans to report on")
    trained = inputs.model_config.get("data", {}).get("lr_voxel_size_mm")
    # Named by scan (results/benchmarks/apply_scan/<scan stem>.tsv): the rule is not the file's folder here.
    costs = [replace(tables.read_benchmark(p), rule="apply_scan") for p in inputs.benchmarks]
    sections = [
        ("voxels", "Voxel sizes", voxels_section(sidecars)),
        ("thumbnails", "All scans", thumbnails_section(inputs, sidecars)),
        ("panels", "Slice panels", panels_section(inputs, list(sidecars))),
        ("model", "Model", model_section(inputs, sidecars)),
        ("cost", "Cost", page.cost_section(costs, [], str(inputs.config.get("device", "?")))),
        ("provenance", "Provenance", provenance_html(inputs)),
    ]
    document = page.page("mrisr apply: QC", lead_html(sidecars, trained), sections)
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(document, encoding="utf-8")
