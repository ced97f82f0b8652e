# Figures: one papermill notebook per figure, reading only the small tables in results/tables;
# the replication findings (`repexp.findings`) and the results page.
# Included last: every stage has added its figures to FIGURES by now.
from repexp.findings import context_json as findings_context
from repexp.findings import provenance_json as findings_provenance


wildcard_constraints:
    figure="|".join(FIGURES) or "no-figures",


rule figure:
    input:
        notebook="notebooks/{figure}.ipynb",
        tables=lambda wildcards: FIGURES[wildcards.figure],
    output:
        pdf=report("results/figures/{figure}.pdf", category="Figures"),
        png="results/figures/{figure}.png",
        notebook="results/notebooks/{figure}.ipynb",
        html="results/notebooks/{figure}.html",
    log:
        "logs/figure/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("figure"),
        runtime=job_runtime("figure"),
    params:
        tables_dir="results/tables",
    shell:
        "(papermill {input.notebook} {output.notebook} -k python3 --cwd . "
        "-p tables_dir {params.tables_dir} -p out_pdf {output.pdf} -p out_png {output.png} "
        "&& jupyter nbconvert --to html --no-input {output.notebook} --output-dir "
        "$(dirname {output.html})) > {log} 2>&1"


rule findings:
    input:
        unpack(lambda wildcards: findings_inputs()),
    output:
        "results/tables/findings.csv",
    log:
        "logs/findings.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("findings"),
        runtime=job_runtime("findings"),
    params:
        config_name=config_names,
        context=findings_context(config),
        provenance=findings_provenance(config),
        rl_questions=lambda wildcards, input: (
            f"--rl-questions {' '.join(input.rl_questions)}"
            if input.rl_questions
            else ""
        ),
    shell:
        "python -m repexp.findings --tables {input.tables} {params.rl_questions} "
        "--context {params.context:q} --config-name {params.config_name} "
        "--provenance {params.provenance:q} --out {output} > {log} 2>&1"


rule results_index:
    input:
        html=expand("results/notebooks/{figure}.html", figure=FIGURES),
        png=expand("results/figures/{figure}.png", figure=FIGURES),
        stc=["results/tables/stc.csv"] if "stc" in FIGURES else [],
        tables=sorted({t for tables in FIGURES.values() for t in tables}),
        findings="results/tables/findings.csv",
    output:
        report("results/index.html", category="Index"),
    log:
        "logs/results_index.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("results_index"),
        runtime=job_runtime("results_index"),
    params:
        config_name=config_names,
        stc=lambda wildcards, input: f"--stc {input.stc}" if input.stc else "",
        stage_hashes=json.dumps(
            {stage: stage_hash(config, stage) for stage in STAGE_SECTIONS},
            sort_keys=True,
        ),
    shell:
        "python -m repexp.report --figures {input.png} --notebooks {input.html} "
        "{params.stc} --findings {input.findings} --config-name {params.config_name} "
        "--tables {input.tables} {input.findings} "
        "--stage-hashes {params.stage_hashes:q} --out {output} > {log} 2>&1"
