rule distill:
    """Train one student with one method and seed: a cell entry of the table."""
    input:
        unpack(student_inputs),
    output:
        metrics=f"{RESULTS}/students/{{dataset}}/{{teacher}}/{{student}}/{{run}}/seed{{seed}}/metrics.json",
        model=f"{RESULTS}/students/{{dataset}}/{{teacher}}/{{student}}/{{run}}/seed{{seed}}/model.pt",
    params:
        spec=lambda wildcards: GRID.student_spec(
            wildcards.teacher, wildcards.student, wildcards.run, wildcards.seed
        ).to_json(),
        teacher=optional_flag("--teacher-checkpoint", "teacher"),
        artifact=optional_flag("--artifact", "artifact"),
        out=f"{RESULTS}/students/{{dataset}}/{{teacher}}/{{student}}/{{run}}/seed{{seed}}",
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    shell:
        "afdistill train --spec {params.spec:q} --data data/{wildcards.dataset} {params.teacher} {params.artifact}"
        " --out {params.out} --threads {threads}"
