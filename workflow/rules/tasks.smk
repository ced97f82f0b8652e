rule prepare_task:
    input:
        task_wheels,
    output:
        "resources/tasks/{task}/{split}.parquet",
    log:
        "logs/prepare_task/{task}/{split}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("prepare_task"),
        runtime=30,
    params:
        source=task_param("source"),
        n=task_param("n_questions", none="all"),
        seed=task_param("subset_seed"),
        qids=task_qids,
        template=task_param("template", none="builtin"),
        options=task_data_options,
        wheel_dir="resources/wheels",
    shell:
        "python -m repexp.tasks --task {wildcards.task} --split {wildcards.split} "
        "--source {params.source} --subset-seed {params.seed} "
        "--n-questions {params.n} --qids={params.qids} "
        "--template {params.template:q} --options {params.options:q} "
        "--wheel-dir {params.wheel_dir} --out {output} > {log} 2>&1"
