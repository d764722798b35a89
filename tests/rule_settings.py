"""Every rule's resources and placement as Snakemake's own command line resolves them, as JSON.

    python tests/rule_settings.py OUT.json SNAKEMAKE_ARGS...

runs ``snakemake SNAKEMAKE_ARGS... --list-rules`` (profiles, --set-resources,
--default-resources and config files parsed by Snakemake itself, the
Snakefile parsed to its end) and, where Snakemake would list the rules,
writes {rule: {"resources": {...}, "local": bool, "group": str | None}}:
each rule's resources evaluated for a first attempt (a string resource such as
slurm_partition is a function of the job's input in Snakemake, which a
dry-run prints as <TBD>; the profile's resources need no input), whether it is
a local rule, and the group the workflow gives it (a profile's groups are
applied later, when jobs are planned). Run as a separate process: Snakemake's
command line changes the working directory and sys.path.
"""

from __future__ import annotations

import json
import sys

from snakemake import cli
from snakemake.api import WorkflowApi
from snakemake.io import InputFiles, Wildcards


def dump_rules(out: str):
    def list_rules(self, only_targets: bool = False) -> None:
        workflow = self._workflow
        rules = {}
        for each in workflow.rules:
            values = each.expand_resources(Wildcards(), InputFiles(), attempt=1)
            rules[each.name] = {
                "resources": {k: v for k, v in values.items() if not k.startswith("_")},
                "local": each.name in workflow._localrules,  # workflow.is_local() is True outside a run
                "group": each._group,  # the rule's own; the property is None outside a cluster run
            }
        with open(out, "w") as fh:
            json.dump(rules, fh, indent=1, default=str)

    return list_rules


if __name__ == "__main__":
    WorkflowApi.list_rules = dump_rules(sys.argv[1])
    sys.exit(cli.main([*sys.argv[2:], "--list-rules"]))
