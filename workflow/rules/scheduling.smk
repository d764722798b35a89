# How this workflow's jobs are scheduled: a fix for Snakemake's job scheduler, and the
# GPU settings every GPU rule shares (share_gpu_settings, at the end).
#
# The fix, applied to this workflow's own run.
#
# Snakemake 9.10 to 9.15 at least (the lock file has 9.15.0; snakemake issue
# #3913, open) skip the resource update when a single ready job is selected
# (JobScheduler.job_selector returns the greedy selection early), yet give the
# job's cores back when it ends: the free cores grow with every such job, and
# later two jobs that each take every core run at once. On a 2-core machine
# the demo's main model and its regression baseline then trained side by side
# with 2 torch threads each, several times slower than one after the other.
# The fix subtracts a lone job's resources where Snakemake forgot to; it is
# applied only while Snakemake's source still has the early return, so a
# Snakemake that fixes it is left alone (tests/test_workflow.py checks both).
import inspect

from snakemake.exceptions import WorkflowError
from snakemake.resources import ParsedResource
from snakemake.scheduling import job_scheduler


def keep_lone_jobs_accounted():
    """Make JobScheduler count the resources of a job it selects alone (snakemake issue #3913)."""
    scheduler = job_scheduler.JobScheduler
    early_return = "if len(jobs) == 1:\n                    return self.job_selector_greedy("
    if getattr(scheduler, "_lone_jobs_accounted", False) or early_return not in inspect.getsource(scheduler):
        return
    original_init = scheduler.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        greedy = self.job_selector_greedy

        def select(jobs, *rest):
            selected = greedy(jobs, *rest)
            if len(jobs) == 1:  # the early return: run_selector does not update for these
                self.update_available_resources(selected)
            return selected

        self.job_selector_greedy = select

    scheduler.__init__ = __init__
    scheduler._lone_jobs_accounted = True


keep_lone_jobs_accounted()


# One place for what every GPU job gets. A rule that runs a network declares
# `gpu=1` among its resources; the profile's set-resources entry `gpu_jobs` (not
# a rule: the settings every such rule shares, e.g. slurm_partition, slurm_account,
# runtime) is applied to each rule that asks for a GPU, after all rules are
# defined (the Snakefile calls share_gpu_settings() last). A rule's own
# set-resources entry still wins, key by key; default-resources lose to both.
# So a GPU partition set once reaches every GPU rule, including ones added later.
GPU_JOBS = "gpu_jobs"


def asks_for_gpu(resources):
    """Whether a rule's resources ask for one GPU or more (``gpu``, as the Slurm executor reads it)."""
    value = resources.get("gpu")
    if callable(value):  # decided per job: assume it may
        return True
    try:
        return int(value or 0) > 0
    except (TypeError, ValueError):
        raise WorkflowError(f"resource gpu={value!r}: expected a number of GPUs") from None


def share_gpu_settings():
    """Give every rule that asks for a GPU the set-resources entry ``gpu_jobs``, under its own entry."""
    overwrite = workflow.resource_settings.overwrite_resources
    names = {each.name for each in workflow.rules}
    if GPU_JOBS in names:
        raise WorkflowError(f"a rule is named {GPU_JOBS}, the set-resources entry shared by all GPU rules")
    shared = overwrite.get(GPU_JOBS, {})
    for each in workflow.rules:  # not `rule`: a Snakemake keyword
        if asks_for_gpu(each.resources):
            own = overwrite.get(each.name, {})
            each.resources.update(
                (key, value.value if isinstance(value, ParsedResource) else value)
                for key, value in shared.items()
                if key not in own
            )

