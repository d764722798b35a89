# Helpers of apply mode and the BIDS derivatives (workflow/rules/apply.smk); APPLY, the
# scans and the sampling settings come from common.smk.
from mrisr.data.bids import ScanName, scan_names
from mrisr.data.sources import source_dataset, source_uri


DERIVATIVES = "results/derivatives/mrisr"  # the derivatives' root, where a sidecar's bids:: URIs start
# {scan stem: subject}: every scan apply mode writes (all subjects and sessions of the
# source), or the training run's test subjects with apply.test_derivatives.
DERIVATIVE_SCANS = scan_names(SUBJECTS if APPLY.enabled else TEST_SUBJECTS if APPLY.test_derivatives else [])
# The cascade applied, read when the workflow is parsed (configs only, not the weights),
# so a missing checkpoint or a sampling setting it cannot run stops the run before any job.
APPLY_MODEL = None
if APPLY.enabled:
    from mrisr.inference import cascade_configs

    APPLY_MODEL = cascade_configs(APPLY.checkpoints)[0]
    check_combinations(APPLY_MODEL["diffusion"], config["sampling"])
    if APPLY.sd_calibration:  # a calibration from another model or sampler stops the run here
        from mrisr.pipeline import check_sd_calibration

        check_sd_calibration(APPLY.sd_calibration, SAMPLING_OPTIONS, APPLY.checkpoints)
# The masked protocol needs the brain mask to normalise a scan; the acquisition protocol
# does not, so a scan whose brain cannot be found is still super-resolved (whole head).
APPLY_NEEDS_MASK = bool(APPLY_MODEL) and APPLY_MODEL["degrade"].get("protocol", "masked") == "masked"
DERIVATIVE_OUTPUTS = {
    "sr": "results/derivatives/mrisr/{scan}_desc-sr_T1w.nii.gz",
    "sr_sidecar": "results/derivatives/mrisr/{scan}_desc-sr_T1w.json",
}
if config["sampling"]["n_samples"] > 1:
    DERIVATIVE_OUTPUTS |= {"sd": "results/derivatives/mrisr/{scan}_desc-sd_T1w.nii.gz",
                           "sd_sidecar": "results/derivatives/mrisr/{scan}_desc-sd_T1w.json"}
MASK_OUTPUTS = {
    "mask": "results/derivatives/mrisr/{scan}_desc-brain_mask.nii.gz",
    "mask_sidecar": "results/derivatives/mrisr/{scan}_desc-brain_mask.json",
}


def scan_subject(wildcards):
    """The source's subject (fetch's {subject}) of a derivative's {scan}."""
    return DERIVATIVE_SCANS[wildcards.scan]


def scan_raw_volumes(wildcards):
    """A scan's raw T1 as fetched, and the source's brain mask when it ships one."""
    subject = scan_subject(wildcards)
    files = {"t1": rules.fetch.output.t1.format(subject=subject)}
    if SOURCE_SHIPS_MASK:
        files["mask"] = rules.fetch.output.mask.format(subject=subject)
    return files


def apply_inputs(wildcards):
    """An apply job's scan and checkpoints, its brain mask when the protocol needs one, and the sd scale if given."""
    files = {"scan": rules.fetch.output.t1.format(subject=scan_subject(wildcards)), "checkpoints": list(APPLY.checkpoints)}
    if APPLY_NEEDS_MASK:
        files["mask"] = MASK_OUTPUTS["mask"].format(scan=wildcards.scan)
    if APPLY.sd_calibration and "sd" in DERIVATIVE_OUTPUTS:
        files["sd_calibration"] = APPLY.sd_calibration
    return files


def qc_inputs(wildcards):
    """A scan's QC figures' inputs: the scan as acquired, its SR and, with several samples, the sd map."""
    files = {"scan": rules.fetch.output.t1.format(subject=scan_subject(wildcards))}
    files |= {key: DERIVATIVE_OUTPUTS[key].format(scan=wildcards.scan) for key in ("sr", "sd") if key in DERIVATIVE_OUTPUTS}
    return files


def held_out_files(wildcards):
    """A training run's test subject as export_derivatives reads it: LR, SR, sd map, brain mask."""
    subject = scan_subject(wildcards)
    files = {"lr": rules.make_lr.output.lr.format(subject=subject, factor=FACTOR_LABEL),
             "sr": SR_OUTPUTS["sr"].format(subject=subject),
             "mask": rules.skullstrip.output.mask.format(subject=subject)}
    if "sd" in SR_OUTPUTS:
        files["sd"] = SD_MAP.format(subject=subject)
    if CALIBRATION_SUBJECTS:
        files["sd_calibration"] = rules.fit_sd_calibration.output.json
    return files


def scan_sources(wildcards):
    """A derivative's BIDS Sources: where its scan came from (and the mask, when SR used it)."""
    subject = scan_subject(wildcards)
    sources = [source_uri(config, subject, LOCAL_SCANS.get(subject))]
    if APPLY_NEEDS_MASK:
        mask = Path(MASK_OUTPUTS["mask"].format(scan=wildcards.scan)).relative_to(DERIVATIVES)
        sources.append(f"bids::{mask.as_posix()}")
    return sources


def mask_sources(wildcards):
    """A brain mask's Sources: the scan, or the source's own mask file when it ships one."""
    subject = scan_subject(wildcards)
    scan = LOCAL_SCANS.get(subject)
    if scan is not None and scan.mask:
        return [Path(scan.mask).absolute().as_uri()]
    return [source_uri(config, subject, scan)]


def dataset_links():
    """DatasetLinks of the derivatives: ``raw`` is the BIDS source the sidecars' bids:raw: URIs point into."""
    root = config["local"].get("bids_root") if config["source"] == "local" else None
    return {"raw": source_dataset(config)["URL"]} if root else {}


def derivative_files(stems):
    """Every derivative file of the given scans, with the dataset description."""
    outputs = list(DERIVATIVE_OUTPUTS.values()) + list(MASK_OUTPUTS.values())
    return [rules.describe_derivatives.output.json] + expand(outputs, scan=stems)


def final_targets():
    """The inputs of the default target: the derivatives and the QC page in apply mode; the report and metrics otherwise
    (with apply.test_derivatives, the test subjects' derivatives too)."""
    if APPLY.enabled:
        return derivative_files(DERIVATIVE_SCANS) + ["results/report/apply.html"]
    return ["results/report/index.html", "results/metrics.tsv"] + (
        derivative_files(DERIVATIVE_SCANS) if DERIVATIVE_SCANS else [])
