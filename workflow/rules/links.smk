rule find_links:
    """A link-finding AFD run; writes its converged attention (S x T) and a heatmap like the paper's Figure 3."""
    input:
        **data_files("{dataset}"),
        teacher=f"{RESULTS}/teachers/{{dataset}}/{{teacher}}/model.pt",
    output:
        links=f"{RESULTS}/links/{{dataset}}/{{teacher}}/{{student}}/links.json",
        csv=f"{RESULTS}/links/{{dataset}}/{{teacher}}/{{student}}/links.csv",
        heatmap=f"{RESULTS}/links/{{dataset}}/{{teacher}}/{{student}}/links.png",
        metrics=f"{RESULTS}/links/{{dataset}}/{{teacher}}/{{student}}/metrics.json",
    params:
        spec=lambda wildcards: GRID.links_spec(wildcards.teacher, wildcards.student).to_json(),
        out=f"{RESULTS}/links/{{dataset}}/{{teacher}}/{{student}}",
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    shell:
        "afdistill train --spec {params.spec:q} --data data/{wildcards.dataset} --teacher-checkpoint {input.teacher}"
        " --out {params.out} --threads {threads}"
