# RepExp replication: one DAG from models and task data to every figure of the paper.
# Default target: every figure + report of the configured run (see README.md).
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/tokenlevel.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


onerror:
    # one line per failed rule: ran out of memory or time in its last attempt, and the fix
    report_failures(log)
