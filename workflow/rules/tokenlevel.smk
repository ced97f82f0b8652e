# Token-level RepExp (paper.md section 2): hardest solvable questions -> runs -> tables.


wildcard_constraints:
    tl_method=r"vanilla|beta[0-9.e+-]+",


rule token_level_questions:
    input:
        scores=token_level_reference_scores,
    output:
        "results/token_level/{model}/{task}/questions.parquet",
    log:
        "logs/token_level_questions/{model}/{task}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("token_level_questions"),
        runtime=10,
    params:
        settings=settings_json(config["token_level"]),
        seed=config["seed"],
    shell:
        "python -m repexp.tokenlevel questions --scores {input.scores} "
        "--settings {params.settings:q} --seed {params.seed} --out {output} > {log} 2>&1"


# A shard's runs are split into parts of `responses_per_job` responses (one job each, run states
# carried between them): shard-<s>.part-<p> for the earlier parts, shard-<s> for the last one,
# whose file holds every response of the shard. One part: shard-<s> only, as before.
rule token_level_run:
    input:
        unpack(token_level_earlier),
        model="resources/models/{model}",
        tasks="resources/tasks/{task}/test.parquet",
        questions="results/token_level/{model}/{task}/questions.parquet",
    output:
        rows="results/token_level/{model}/{task}/{tl_method}/shard-{tl_shard}.parquet",
        state=temp(
            "results/token_level/{model}/{task}/{tl_method}/shard-{tl_shard}.state.pt"
        ),
    log:
        "logs/token_level_run/{model}/{task}/{tl_method}/shard-{tl_shard}.log",
    wildcard_constraints:
        tl_shard=r"\d+(\.part-\d+)?",
    conda:
        "../../envs/generation.yaml"
    threads: 1
    resources:
        mem_mb=job_mem_mb("token_level_run"),
        runtime=720,
    params:
        beta=token_level_beta,
        job=token_level_job,
        settings=settings_json(config["token_level"]),
        dtype=model_dtype,
        verifier=verifier_args,
        seed=config["seed"],
    shell:
        "python -m repexp.tokenlevel run --model {input.model} --model-name {wildcards.model} "
        "--tasks {input.tasks} --questions {input.questions} --method {wildcards.tl_method} "
        "--beta {params.beta} --shard {params.job[shard]} --part {params.job[part]} "
        "--responses-per-job {params.job[responses_per_job]} {params.job[cli]} "
        "--settings {params.settings:q} --seed {params.seed} --dtype {params.dtype} "
        "--threads {threads} {params.verifier} --state-out {output.state} "
        "--out {output.rows} > {log} 2>&1"


rule token_level_summary:
    input:
        runs=token_level_runs,
        questions=lambda wildcards: "results/token_level/{model}/{task}/questions.parquet".format(
            **config["token_level"]
        ),
    output:
        passk="results/tables/tokenlevel_passk.csv",
        difficulty="results/tables/tokenlevel_difficulty.csv",
        runs="results/tables/tokenlevel_runs.csv",
    log:
        "logs/token_level_summary.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("token_level_summary"),
        runtime=10,
    params:
        model=config["token_level"]["model"],
        task=config["token_level"]["task"],
        settings=settings_json(config["token_level"]),
        provenance=stage_provenance("token_level"),
    shell:
        "python -m repexp.tokenlevel summarize --runs {input.runs} --questions {input.questions} "
        "--model-name {params.model} --task {params.task} --settings {params.settings:q} "
        "--out-passk {output.passk} --out-difficulty {output.difficulty} "
        "--out-runs {output.runs} --provenance {params.provenance:q} > {log} 2>&1"
