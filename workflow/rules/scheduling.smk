# A fix for Snakemake's job scheduler, applied to this workflow's own run.
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
