# Helpers shared by all stages: the subject list, the split, the cascade.
# The workflow imports its core package from this checkout's src/, so the
# rules and the scripts always run the code they were written against.
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from mrisr.data.demo import demo_subject_ids
from mrisr.data.splits import split_subjects
from mrisr.diffusion.cascade import stage_grids, total_factor


def subject_list():
    """Subject IDs of the configured source."""
    return demo_subject_ids(config["demo"]["n_subjects"])


SUBJECTS = subject_list()
# The split is a pure function of subjects and seed: the DAG is planned with
# the same function the split rule writes results/splits.tsv with.
SPLIT = split_subjects(
    SUBJECTS,
    config["split"]["seed"],
    config["split"]["val_fraction"],
    config["split"]["test_fraction"],
)
TRAIN_SUBJECTS = [s for s, v in SPLIT.items() if v == "train"]
VAL_SUBJECTS = [s for s, v in SPLIT.items() if v == "val"]
TEST_SUBJECTS = [s for s, v in SPLIT.items() if v == "test"]
FACTORS = config["cascade"]["factors"]
FACTOR = total_factor(FACTORS)
STAGES = [g.stage + 1 for g in stage_grids(FACTORS)]  # 1-based in file names
# The part of the config a trained model depends on; a change re-runs training.
# train.checkpoint_every is left out: resuming is exact, so how often training
# saves its resume checkpoint does not change the model.
MODEL_CONFIG = {key: config[key] for key in ("cascade", "degrade", "diffusion", "model")}
MODEL_CONFIG["train"] = {k: v for k, v in config["train"].items() if k != "checkpoint_every"}


wildcard_constraints:
    subject="|".join(re.escape(s) for s in SUBJECTS),
    stage=r"\d+",
    factor=r"\d+",


def fitting_subjects():
    """Subjects a model may learn from (train) or be selected on (val); never test."""
    return TRAIN_SUBJECTS + VAL_SUBJECTS


def training_volumes(wildcards):
    """HR, LR and mask files of the train and val subjects, by subject."""
    subjects = fitting_subjects()
    return {
        "hr": expand(rules.skullstrip.output.t1, subject=subjects),
        "lr": expand(rules.make_lr.output.lr, subject=subjects, factor=FACTOR),
        "mask": expand(rules.skullstrip.output.mask, subject=subjects),
    }


def stage_index(wildcards):
    """The 0-based cascade stage of a train_stage job."""
    return int(wildcards.stage) - 1


def all_checkpoints(wildcards):
    return expand(rules.train_stage.output.checkpoint, stage=STAGES)


def all_train_logs(wildcards):
    return expand(rules.train_stage.output.log_tsv, stage=STAGES)


def test_lr(wildcards):
    return expand(rules.make_lr.output.lr, subject=wildcards.subject, factor=FACTOR)


def figure_subject():
    """The test subject shown in the report's slice panels."""
    return TEST_SUBJECTS[0]
