# RL post-training (paper.md section 3): GRPO / Unlikeliness / RepExp -> best checkpoint -> pass@k.
# Train each (task, method, seed) -> sample the test set from its best checkpoint and from the base
# model (the pool machinery) -> score -> per-question tables -> the RL tables of the figures.
# The methods are the table repexp.rl.methods.METHODS: the wildcard constraints are built from it.

from repexp.rl.methods import run_pattern, wildcard_pattern


rule rl_train:
    input:
        model="resources/models/{model}",
        train="resources/tasks/{task}/train.parquet",
        dev=rl_task_table("dev"),
    output:
        done="results/rl/{model}/{task}/{method}/seed{seed}/done.json",
        best=directory("results/rl/{model}/{task}/{method}/seed{seed}/best"),
        best_json="results/rl/{model}/{task}/{method}/seed{seed}/best.json",
        dev="results/rl/{model}/{task}/{method}/seed{seed}/dev.csv",
        train_log="results/rl/{model}/{task}/{method}/seed{seed}/train_log.csv",
    log:
        "logs/rl_train/{model}/{task}/{method}/seed{seed}.log",
    wildcard_constraints:
        method=wildcard_pattern(),
        seed=r"\d+",
    conda:
        "../../envs/training.yaml"
    threads: 1  # two trainings side by side on a 2-core machine; the Slurm profile sets more
    resources:
        mem_mb=job_mem_mb("rl_train"),
        runtime=job_runtime("rl_train"),
        gpu=rl_gpus(),  # rl.gpus_per_run (the paper: 8), one training process each
        nodes=1,  # all on one node: `accelerate launch` starts every process there (Slurm --nodes=1)
    params:
        launcher=rl_launcher,
        settings=rl_train_settings,
        source=task_param("source"),
        verifiers=json.dumps(config["verifiers"], sort_keys=True),
        out_dir=subpath(output.done, parent=True),
    shell:
        "{params.launcher} --model {input.model} --model-name {wildcards.model} "
        "--task {wildcards.task} --train {input.train} --dev {input.dev} "
        "--method {wildcards.method} --seed {wildcards.seed} --settings {params.settings:q} "
        "--source {params.source} --verifiers {params.verifiers:q} --threads {threads} "
        "--out {params.out_dir} > {log} 2>&1"


rule rl_test_pool:
    input:
        model=rl_policy,
        tasks=rl_task_table("test"),
    output:
        "results/rl/{model}/{task}/{run}/test/shard-{shard}.parquet",
    log:
        "logs/rl_test_pool/{model}/{task}/{run}/shard-{shard}.log",
    wildcard_constraints:
        run=run_pattern(),
    conda:
        "../../envs/generation.yaml"
    threads: 1  # beside a one-thread training on 2 cores; the Slurm profile sets more
    resources:
        mem_mb=job_mem_mb("rl_test_pool"),
        runtime=job_runtime("rl_test_pool"),
        gpu=pool_gpus(),
    params:
        n=config["rl"]["test_samples"],
        max_new_tokens=rl_max_new_tokens,
        per_shard=rl_questions_per_shard,
        backend=config["inference"]["pool"]["backend"],
        batch_size=config["inference"]["pool"]["batch_size"],
        dtype=rl_policy_dtype,
        seed=config["seed"],
    shell:
        "python -m repexp.pools --model {input.model} --model-name {wildcards.model}/{wildcards.run} "
        "--tasks {input.tasks} --sampler-name rl-test --shard {wildcards.shard} "
        "--questions-per-shard {params.per_shard} --n {params.n} "
        "--max-new-tokens {params.max_new_tokens} --temperature 1.0 --top-p 1.0 --min-p 0.0 "
        "--top-k 0 --seed {params.seed} --backend {params.backend} "
        "--batch-size {params.batch_size} --dtype {params.dtype} --threads {threads} "
        "--out {output} > {log} 2>&1"


rule rl_test_score:
    input:
        pool="results/rl/{model}/{task}/{run}/test/shard-{shard}.parquet",
        tasks=rl_task_table("test"),
    output:
        "results/rl/{model}/{task}/{run}/test/shard-{shard}.scores.parquet",
    log:
        "logs/rl_test_score/{model}/{task}/{run}/shard-{shard}.log",
    wildcard_constraints:
        run=run_pattern(),
    conda:
        "../../envs/analysis.yaml"
    threads: config["verifiers"]["workers"]
    resources:
        mem_mb=job_mem_mb("rl_test_score"),
        runtime=120,
    params:
        verifier=rl_test_verifier,
    shell:
        "python -m repexp.score --pool {input.pool} --tasks {input.tasks} --workers {threads} "
        "{params.verifier} --out {output} > {log} 2>&1"


rule rl_test_questions:
    input:
        base_model="resources/models/{model}",
        pools=rl_test_files("pools"),
        scores=rl_test_files("scores"),
    output:
        "results/rl/{model}/{task}/{run}/test/questions.parquet",
    log:
        "logs/rl_test_questions/{model}/{task}/{run}.log",
    wildcard_constraints:
        run=run_pattern(),
    conda:
        "../../envs/generation.yaml"
    threads: 1  # beside a one-thread training on 2 cores; the Slurm profile sets more
    resources:
        mem_mb=job_mem_mb("rl_test_questions"),
        runtime=60,
        gpu=pool_gpus(),
    params:
        dtype=rl_policy_dtype,
        batch_tokens=config["inference"]["features"]["batch_tokens"],
    shell:
        "python -m repexp.rl.evaluate questions --base-model {input.base_model} "
        "--dtype {params.dtype} --pools {input.pools} --scores {input.scores} "
        "--task {wildcards.task} --run {wildcards.run} --batch-tokens {params.batch_tokens} "
        "--threads {threads} --out {output} > {log} 2>&1"


rule rl_tables:
    input:
        questions=rl_outputs("questions"),
        runs=rl_outputs("done"),
    output:
        passk="results/tables/rl_passk.csv",
        efficiency="results/tables/rl_efficiency.csv",
        dev="results/tables/rl_dev.csv",
        train="results/tables/rl_train.csv",
        best="results/tables/rl_best.csv",
        loglik="results/tables/rl_loglik.parquet",
        divergence="results/tables/rl_divergence.csv",
    log:
        "logs/rl_tables.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("rl_tables"),
        runtime=30,
    params:
        out_dir=subpath(output.passk, parent=True),
        provenance=stage_provenance("rl"),
    shell:
        "python -m repexp.rl.evaluate tables --questions {input.questions} "
        "--runs {input.runs} --provenance {params.provenance:q} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule rl_hparams:
    output:
        "results/tables/rl_hparams.csv",
    log:
        "logs/rl_hparams.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("rl_hparams"),
        runtime=5,
    params:
        rl=json.dumps(config["rl"], sort_keys=True),
        model_spec=json.dumps(config["models"].get(config["rl"]["model"], {})),
        provenance=stage_provenance("rl"),
    shell:
        "python -m repexp.rl.evaluate hparams --rl {params.rl:q} "
        "--model-spec {params.model_spec:q} --provenance {params.provenance:q} "
        "--out {output} > {log} 2>&1"
