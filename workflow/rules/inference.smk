# Inference-time RepExp (paper.md section 1): pools -> scores -> features -> selection -> tables.


rule generate_pool:
    input:
        model="resources/models/{model}",
        tasks="resources/tasks/{task}/test.parquet",
    output:
        "results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.parquet",
    log:
        "logs/generate_pool/{model}/{task}/{sampler}/shard-{shard}.log",
    conda:
        "../../envs/generation.yaml"
    threads: 2
    resources:
        mem_mb=job_mem_mb("generate_pool"),
        runtime=job_runtime("generate_pool"),
        gpu=pool_gpus(),
    params:
        n=lambda wildcards: pool_setting("n", wildcards),
        max_new_tokens=lambda wildcards: pool_setting("max_new_tokens", wildcards),
        sampler=sampler_args,
        per_shard=pool_shard_size,
        backend=config["inference"]["pool"]["backend"],
        batch_size=config["inference"]["pool"]["batch_size"],
        responses_per_call=config["inference"]["pool"]["responses_per_call"],
        vllm_engine=vllm_engine_args(),
        dtype=model_dtype,
        seed=config["seed"],
    shell:
        "python -m repexp.pools --model {input.model} --model-name {wildcards.model} "
        "--tasks {input.tasks} --sampler-name {wildcards.sampler} --shard {wildcards.shard} "
        "--questions-per-shard {params.per_shard} --n {params.n} "
        "--max-new-tokens {params.max_new_tokens} {params.sampler} --seed {params.seed} "
        "--backend {params.backend} --batch-size {params.batch_size} "
        "--responses-per-call {params.responses_per_call} {params.vllm_engine} "
        "--dtype {params.dtype} "
        "--threads {threads} --out {output} > {log} 2>&1"


rule score_pool:
    input:
        pool="results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.parquet",
        tasks="resources/tasks/{task}/test.parquet",
    output:
        "results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.scores.parquet",
    log:
        "logs/score_pool/{model}/{task}/{sampler}/shard-{shard}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: config["verifiers"]["workers"]
    resources:
        mem_mb=job_mem_mb("score_pool"),
        runtime=120,
    params:
        verifier=verifier_args,
    shell:
        "python -m repexp.score --pool {input.pool} --tasks {input.tasks} --workers {threads} "
        "{params.verifier} --out {output} > {log} 2>&1"


rule pool_stats:
    input:
        scores=pool_shard_files("scores"),
    output:
        "results/inference/pools/{model}/{task}/{sampler}/stats.parquet",
    log:
        "logs/pool_stats/{model}/{task}/{sampler}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("pool_stats"),
        runtime=30,
    shell:
        "python -m repexp.score stats --scores {input.scores} --model {wildcards.model} "
        "--task {wildcards.task} --sampler {wildcards.sampler} --out {output} > {log} 2>&1"


rule cache_features:
    input:
        model="resources/models/{model}",
        pool="results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.parquet",
    output:
        manifest="results/inference/features/{model}/{task}/{sampler}/shard-{shard}.json",
        tensors="results/inference/features/{model}/{task}/{sampler}/shard-{shard}.safetensors",
    log:
        "logs/cache_features/{model}/{task}/{sampler}/shard-{shard}.log",
    conda:
        "../../envs/generation.yaml"
    threads: 2
    resources:
        mem_mb=job_mem_mb("cache_features"),
        runtime=job_runtime("cache_features"),
        gpu=pool_gpus(),
    params:
        poolings=feature_poolings,
        dtype=config["inference"]["features"]["dtype"],
        model_dtype=model_dtype,
        batch_tokens=config["inference"]["features"]["batch_tokens"],
        gpu_memory_gb=config["inference"]["features"]["gpu_memory_gb"] or 0,
        gpu_memory_fraction=config["inference"]["features"]["gpu_memory_fraction"],
    shell:
        "python -m repexp.features --model {input.model} --model-name {wildcards.model} "
        "--pool {input.pool} --poolings {params.poolings} --dtype {params.dtype} "
        "--model-dtype {params.model_dtype} --batch-tokens {params.batch_tokens} "
        "--gpu-memory-gb {params.gpu_memory_gb} "
        "--gpu-memory-fraction {params.gpu_memory_fraction} "
        "--threads {threads} --out {output.manifest} > {log} 2>&1"


rule select_pool:
    input:
        features=pool_shard_files("features"),
        scores=pool_shard_files("scores"),
        # texts, log-probs and token counts of the text, likelihood and answer selectors
        pools=pool_shard_files("pools"),
    output:
        trials="results/inference/selection/{model}/{task}/{sampler}/{pooling}.trials.parquet",
        questions="results/inference/selection/{model}/{task}/{sampler}/{pooling}.questions.parquet",
        passk="results/inference/selection/{model}/{task}/{sampler}/{pooling}.passk.parquet",
    log:
        "logs/select_pool/{model}/{task}/{sampler}/{pooling}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1  # worker processes, one question each (the Slurm profile sets more)
    resources:
        mem_mb=job_mem_mb("select_pool"),
        runtime=120,
    params:
        prefix=subpath(output.trials, strip_suffix=".trials.parquet"),
        proj_dim=config["inference"]["selection"]["proj_dim"],
        lam=config["inference"]["selection"]["lam"],
        trials=config["inference"]["selection"]["trials"],
        k_max=config["inference"]["selection"]["k_max"] or "all",
        center="" if config["inference"]["selection"]["center"] else "--no-center",
        projection_seed=config["inference"]["selection"]["projection_seed"],
        # inference.selection.methods less the repexp_layer<L> this pool and pooling lack
        methods=lambda w: " ".join(
            repexp_dag.pool_methods(config, w.model, w.task, w.sampler, w.pooling)
        ),
        verifiers=verifier_settings("inference"),
        seed=config["seed"],
    shell:
        "python -m repexp.inference select --features {input.features} --scores {input.scores} "
        "--pools {input.pools} --verifiers {params.verifiers:q} "
        "--model {wildcards.model} --task {wildcards.task} --sampler {wildcards.sampler} "
        "--pooling {wildcards.pooling} --methods {params.methods} "
        "--proj-dim {params.proj_dim} --lam {params.lam} "
        "--trials {params.trials} --k-max {params.k_max} {params.center} "
        "--projection-seed {params.projection_seed} --seed {params.seed} "
        "--threads {threads} --out-prefix {params.prefix} > {log} 2>&1"


rule summarize_inference:
    input:
        questions=selection_files("questions"),
        passk=selection_files("passk"),
        stats=pool_stats_files(),
        tasks=expand(
            "resources/tasks/{task}/test.parquet", task=config["inference"]["tasks"]
        ),
    output:
        stc="results/tables/stc.csv",
        deciles="results/tables/deciles.csv",
        passk="results/tables/passk.csv",
        questions="results/tables/questions.parquet",
    log:
        "logs/summarize_inference.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("summarize_inference"),
        runtime=30,
    params:
        out_dir=subpath(output.stc, parent=True),
        reference=config["inference"]["metrics"]["reference_model"] or "",
        unsolved=(
            ""
            if config["inference"]["metrics"]["exclude_unsolved"]
            else "--include-unsolved"
        ),
        provenance=stage_provenance("inference"),
    shell:
        "python -m repexp.inference summarize --questions {input.questions} "
        "--passk {input.passk} --pool-stats {input.stats} --task-tables {input.tasks} "
        "--reference-model={params.reference} {params.unsolved} "
        "--provenance {params.provenance:q} --out-dir {params.out_dir} > {log} 2>&1"


rule overview:
    input:
        features=overview_files("features"),
        scores=overview_files("scores"),
    output:
        "results/tables/overview.parquet",
    log:
        "logs/overview.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("overview"),
        runtime=30,
    params:
        model=overview_pool()["model"],
        task=overview_pool()["task"],
        proj_dim=config["inference"]["selection"]["proj_dim"],
        lam=config["inference"]["selection"]["lam"],
        projection_seed=config["inference"]["selection"]["projection_seed"],
        seed=config["seed"],
        provenance=stage_provenance("inference"),
    shell:
        "python -m repexp.inference overview --features {input.features} --scores {input.scores} "
        "--model {params.model} --task {params.task} --proj-dim {params.proj_dim} "
        "--lam {params.lam} --projection-seed {params.projection_seed} --seed {params.seed} "
        "--threads {threads} --provenance {params.provenance:q} --out {output} > {log} 2>&1"
