# Helpers shared by all stages: the subject list, the split, the cascade.
# (The Snakefile has put this checkout's src/ on the path.)
import json

from mrisr.compare import compare_configs, model_config
from mrisr.config import ApplySettings, CalibrationSettings, SamplingOptions, check_combinations
from mrisr.data.bids import STEM_PATTERN
from mrisr.data.sources import data_identity, local_scans, ships_mask, subject_id_pattern, subject_ids
from mrisr.data.splits import split_subjects
from mrisr.data.degrade import factor_label
from mrisr.diffusion.cascade import stage_grids, total_factor
from mrisr.pipeline import SAMPLING_SETTINGS


# Apply mode (config key apply.checkpoints): a trained cascade over every scan of
# the source, no split, training or evaluation (workflow/rules/apply.smk).
APPLY = ApplySettings.from_mapping(config["apply"])
# Local scans are found once, when the workflow is parsed: {subject: files}. In
# apply mode every session of a BIDS dataset is a scan of its own (sub-01_ses-2).
LOCAL_SCANS = local_scans(config, sessions=APPLY.enabled)


def subject_list():
    """Subject IDs of the configured source, validated (they name folders under results/)."""
    if config["source"] == "local":
        return list(LOCAL_SCANS)
    return subject_ids(config)


SUBJECTS = subject_list()
SOURCE_SHIPS_MASK = ships_mask(config)
# The split is a pure function of subjects and seed: the DAG is planned with
# the same function the split rule writes results/splits.tsv with. Apply mode has none.
SPLIT = {} if APPLY.enabled else split_subjects(
    SUBJECTS,
    config["split"]["seed"],
    config["split"]["val_fraction"],
    config["split"]["test_fraction"],
)
TRAIN_SUBJECTS = [s for s, v in SPLIT.items() if v == "train"]
VAL_SUBJECTS = [s for s, v in SPLIT.items() if v == "val"]
TEST_SUBJECTS = [s for s, v in SPLIT.items() if v == "test"]
FACTORS = config["cascade"]["factors"]
FACTOR = total_factor(FACTORS)  # per axis
FACTOR_LABEL = factor_label(FACTOR)  # in the LR's file name: x2, or x1x1x4 per axis
# The slice method's profile (data/degrade.py), given to every rule that degrades.
SLICE_PROFILE = {"slice_profile": config["degrade"]["slice_profile"], "slice_gap": config["degrade"]["slice_gap"]}
ACQUISITION = config["degrade"]["protocol"] == "acquisition"  # else the seed's masked protocol (data/protocol.py)
STAGES = [g.stage + 1 for g in stage_grids(FACTORS)]  # 1-based in file names
def canonical(value):
    """``value`` with dict keys sorted at every level. Snakemake compares a rule's
    params as written, so the same settings in another key order (another config
    file) would otherwise re-run the rule."""
    return json.loads(json.dumps(value, sort_keys=True))


# The part of the config a trained model depends on; a change re-runs training.
MODEL_CONFIG = canonical(model_config(config))
# Validated once here, so a bad combination fails before any job runs.
check_combinations(config["diffusion"], config["sampling"])  # stops the run before any job, with the reason
SAMPLING_OPTIONS = SamplingOptions.from_mapping(config["sampling"])
SAMPLING = canonical(SAMPLING_OPTIONS.to_dict())
# How the sd map is calibrated (its own section, so that changing it re-runs the
# calibration only, never the inference).
CALIBRATION = CalibrationSettings.from_mapping(config["calibration"])
# Models compared with the main one (config key compare): its model config with
# the comparison's model/train keys overridden.
COMPARE = canonical(compare_configs(MODEL_CONFIG, config["compare"]))

# Predict, then refine (diffusion.target: predictor_residual): each stage trains
# its predictor first (rule train_predictor), writes its output beside every
# train/val subject's stage cache (rule predict), and its diffusion model learns
# the residual over it (rule train_stage).
PREDICT_AND_REFINE = config["diffusion"]["target"] == "predictor_residual"

# A trained cascade's runs share their rules (train_stage, super_resolve) and differ
# in a path prefix, the wildcard {branch}: "" for the main model on the test
# subjects (results/models/, results/sr/), "calibration/" for the main model on the
# validation subjects the sd map is calibrated on (results/calibration/sr/), and
# "compare/{name}/" for a compared model (config key compare; results/compare/{name}/).
MAIN, CALIBRATION_BRANCH = "", "calibration/"
COMPARE_BRANCH = "compare/{name}/"
TRAIN_BRANCHES = r"(compare/[a-z0-9][a-z0-9_]*/)?"
SR_BRANCHES = r"(calibration/|compare/[a-z0-9][a-z0-9_]*/)?"


def compare_branch(name):
    return COMPARE_BRANCH.format(name=name)


def branch_of(wildcards):
    """The model a {branch} runs: its config (the main one, or a compared one's) and its models' branch."""
    if wildcards.branch.startswith("compare/"):
        name = wildcards.branch.split("/")[1]
        return COMPARE[name], compare_branch(name)
    return MODEL_CONFIG, MAIN


# The SR volume, every stage's output, the uncertainty map when several samples
# are drawn, and for predict-and-refine the predictor alone and one sample:
# super_resolve's outputs, under every branch.
SR_BRANCH_OUTPUTS = {
    "sr": "results/{branch}sr/{subject}/sr.nii.gz",
    "stages": expand("results/{{branch}}sr/{{subject}}/stage{stage}.nii.gz", stage=STAGES),
}
if PREDICT_AND_REFINE:
    SR_BRANCH_OUTPUTS["predictor"] = "results/{branch}sr/{subject}/sr_predictor.nii.gz"
if PREDICT_AND_REFINE and SAMPLING_OPTIONS.n_samples > 1:
    SR_BRANCH_OUTPUTS["sample"] = "results/{branch}sr/{subject}/sr_sample.nii.gz"
# Per-subject metrics, and the error-versus-uncertainty table with an sd map.
EVAL_OUTPUTS = {"tsv": "results/metrics/{subject}.tsv"}
# The sd map a test subject gets (sd.nii.gz). With calibration.subjects
# the samples' sd is written as sd_uncalibrated.nii.gz and calibrated on that many
# validation subjects (super_resolve in the calibration/ branch, fit_sd_calibration,
# calibrate_sd; metrics.fit_sd_calibration); otherwise it is the map itself.
SD_MAP = "results/sr/{subject}/sd.nii.gz"
CALIBRATION_SUBJECTS = []
if SAMPLING_OPTIONS.n_samples > 1:
    EVAL_OUTPUTS["calibration"] = "results/metrics/{subject}_calibration.tsv"
    CALIBRATION_SUBJECTS = VAL_SUBJECTS[: CALIBRATION.subjects]  # a split has one at least
    SR_BRANCH_OUTPUTS["sd"] = ("results/{branch}sr/{subject}/sd_uncalibrated.nii.gz" if CALIBRATION_SUBJECTS
                               else "results/{branch}sr/{subject}/sd.nii.gz")


def in_branch(pattern, branch):
    """A {branch} pattern (or a list of them) with the branch filled in and every other wildcard kept."""
    if isinstance(pattern, list):
        return [in_branch(p, branch) for p in pattern]
    return pattern.replace("{branch}", branch)


# The main model's SR outputs of a test subject (results/sr/{subject}/...).
SR_OUTPUTS = {key: in_branch(pattern, MAIN) for key, pattern in SR_BRANCH_OUTPUTS.items()}


# The source's ID grammar rather than the list of IDs: with a 1,113-way
# alternation Snakemake rescans an 8 kB pattern for every file of every job
# (docs/benchmarks.md, "DAG scale").
wildcard_constraints:
    subject=subject_id_pattern(config),
    scan=STEM_PATTERN,
    name=r"[a-z0-9][a-z0-9_]*",
    stage=r"\d+",
    branch=SR_BRANCHES,
    factor=r"\d+(x\d+x\d+)?",


def source_mask_output():
    """The fetch rule's mask output, for sources that ship a brain mask; none otherwise."""
    if SOURCE_SHIPS_MASK:
        return {"mask": "results/raw/{subject}/brainmask.nii.gz"}
    return {}


def local_scan_files(wildcards):
    """The fetch inputs of a local subject (its T1 and mask files); none for other sources."""
    scan = LOCAL_SCANS.get(wildcards.subject)
    if scan is None:
        return {}
    return {"t1": scan.t1} | ({"mask": scan.mask} if scan.mask else {})


def raw_volumes(wildcards):
    """The raw T1 of a subject, and the source's brain mask when it ships one."""
    files = {"t1": rules.fetch.output.t1}
    if SOURCE_SHIPS_MASK:
        files["mask"] = rules.fetch.output.mask
    return files


# predict's output beside each train/val subject's stage cache: g over its condition (predict, then refine)
PREDICTIONS = "results/cache/stage{stage}/{subject}/pred.npy"


def fitting_subjects():
    """Subjects a model may learn from (train) or be selected on (val); never test."""
    return TRAIN_SUBJECTS + VAL_SUBJECTS


def training_caches(wildcards):
    """The stage's training caches (their cache.json, written last) of the train and val subjects."""
    return expand(rules.cache_stage.output.info, stage=wildcards.stage, subject=fitting_subjects())


def diffusion_training_inputs(wildcards):
    """What a stage's diffusion model trains on beyond its caches: for predict-and-refine, the stage's predictor
    (carried into its checkpoint) and its output over every train/val subject's cache."""
    if not PREDICT_AND_REFINE:
        return {}
    return {"predictor": rules.train_predictor.output.checkpoint.format(stage=wildcards.stage),
            "preds": expand(PREDICTIONS, stage=wildcards.stage, subject=fitting_subjects())}


def subject_lr(wildcards):
    """A subject's LR volume at the cascade's total factor."""
    return expand(rules.make_lr.output.lr, subject=wildcards.subject, factor=FACTOR_LABEL)


def stage_index(wildcards):
    """The 0-based cascade stage of a train_stage job."""
    return int(wildcards.stage) - 1


def branch_checkpoints(branch):
    """The checkpoints, one per stage, of the cascade a {branch} runs."""
    return expand(in_branch(rules.train_stage.output.checkpoint, branch), stage=STAGES)


def all_checkpoints(wildcards):
    return branch_checkpoints(MAIN)


def sr_checkpoints(wildcards):
    """The checkpoints super_resolve runs: the compared model's in its branch, else the main model's."""
    return branch_checkpoints(branch_of(wildcards)[1])


def all_train_logs(wildcards):
    return expand(in_branch(rules.train_stage.output.log_tsv, MAIN), stage=STAGES)


def compare_train_logs():
    """{name: the compared model's train logs, one per stage}."""
    return {name: expand(in_branch(rules.train_stage.output.log_tsv, compare_branch(name)), stage=STAGES)
            for name in COMPARE}


def compare_sr(wildcards):
    """The compared models' SR volumes of a subject, by input name compare_{name}."""
    return {f"compare_{name}": in_branch(SR_BRANCH_OUTPUTS["sr"], compare_branch(name)).format(subject=wildcards.subject)
            for name in COMPARE}


def predictor_sr(wildcards):
    """Predict-and-refine's predictor alone and one sample of a test subject, scored beside SR."""
    names = {"predictor": "sr_predictor", "sample": "sr_sample"}
    return {names[k]: SR_OUTPUTS[k].format(subject=wildcards.subject) for k in names if k in SR_OUTPUTS}


def test_lr(wildcards):
    return subject_lr(wildcards)


def uncertainty_input(wildcards):
    """The SR samples' sd map, when several samples are drawn."""
    if "sd" not in SR_OUTPUTS:
        return {}
    return {"sd": SD_MAP.format(subject=wildcards.subject)}


def cost_benchmarks(wildcards):
    """Benchmark files of the costly jobs the report tabulates: training per stage, inference and evaluation per
    test subject, for the main model and each compared one."""
    branches = [MAIN, *(compare_branch(name) for name in COMPARE)]
    return (
        [f for b in branches for f in expand(in_branch(rules.train_stage.benchmark, b), stage=STAGES)]
        + (expand(rules.train_predictor.benchmark, stage=STAGES) if PREDICT_AND_REFINE else [])
        + [f for b in branches for f in expand(in_branch(rules.super_resolve.benchmark, b), subject=TEST_SUBJECTS)]
        + expand(rules.evaluate.benchmark, subject=TEST_SUBJECTS)
    )
