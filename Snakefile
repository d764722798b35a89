# mrisr: diffusion super-resolution of brain MRI.
# Table of contents: config and its schema, the report, one rule file per stage.
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow imports its core package from this checkout's src/, as every
# job's script does, so the rules and the scripts always run the code they
# were written against: importing workflow/scripts/_adapter.py (the one place
# that knows where src/ is) puts it on the path, here as in each script.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))
import _adapter  # noqa: E402,F401

from mrisr.config import refuse_moved_keys  # noqa: E402


configfile: "config/config.yaml"


refuse_moved_keys(config)  # a key that moved is named with its new place, before the schema's generic error
validate(config, "config/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/scheduling.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/apply_common.smk"
include: "workflow/rules/data.smk"


# Apply mode (apply.checkpoints) has no split, training or evaluation rules at all,
# so the checkpoints it reads can never be planned, re-made or deleted by a training job.
if not APPLY.enabled:

    include: "workflow/rules/degrade.smk"
    include: "workflow/rules/split.smk"
    include: "workflow/rules/train.smk"
    include: "workflow/rules/infer.smk"
    include: "workflow/rules/evaluate.smk"
    include: "workflow/rules/report.smk"


include: "workflow/rules/apply.smk"


rule all:
    default_target: True
    input:
        # Training mode: the report and metrics; apply mode (apply.checkpoints): the
        # BIDS derivatives and the QC page (common.smk).
        final_targets(),


# Last, once every rule exists: the profile's GPU settings (set-resources: gpu_jobs)
# reach every rule that asks for a GPU (workflow/rules/scheduling.smk).
share_gpu_settings()
