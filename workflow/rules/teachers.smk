rule train_teacher:
    """Pretrain a teacher with cross-entropy (or evaluate a published checkpoint named in the grid)."""
    input:
        **data_files("{dataset}"),
    output:
        model=f"{RESULTS}/teachers/{{dataset}}/{{teacher}}/model.pt",
        metrics=f"{RESULTS}/teachers/{{dataset}}/{{teacher}}/metrics.json",
    params:
        spec=lambda wildcards: GRID.teacher_spec(wildcards.teacher).to_json(),
        out=f"{RESULTS}/teachers/{{dataset}}/{{teacher}}",
    threads: workflow.cores if not ON_GPU else THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    shell:
        "afdistill train --spec {params.spec:q} --data data/{wildcards.dataset} --out {params.out} --threads {threads}"
