rule pretrain_heads:
    """Train a method's own network on the frozen teacher before distillation (MHGD's multi-head attention)."""
    input:
        **data_files("{dataset}"),
        teacher=f"{RESULTS}/teachers/{{dataset}}/{{teacher}}/model.pt",
    output:
        model=f"{RESULTS}/heads/{{dataset}}/{{teacher}}/{{run}}/model.pt",
        metrics=f"{RESULTS}/heads/{{dataset}}/{{teacher}}/{{run}}/metrics.json",
    params:
        spec=lambda wildcards: GRID.heads_spec(wildcards.teacher, wildcards.run).to_json(),
        out=f"{RESULTS}/heads/{{dataset}}/{{teacher}}/{{run}}",
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    shell:
        "afdistill train --spec {params.spec:q} --data data/{wildcards.dataset} --teacher-checkpoint {input.teacher}"
        " --out {params.out} --threads {threads}"
