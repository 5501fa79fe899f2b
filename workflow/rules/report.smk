rule report:
    """The grid's table (Markdown, CSV), DVC metrics, learning curves and link heatmaps, from its MLflow runs."""
    input:
        ALL_TEACHER_METRICS + ALL_LINKS + ALL_STUDENT_METRICS,
    output:
        table=report(f"{REPORTS}/table.md", caption="../report/table.rst", category="Tables"),
        csv=f"{REPORTS}/table.csv",
        metrics=f"{REPORTS}/metrics.json",
        curves=report(
            [f"{REPORTS}/figures/curves_{p.teacher}_{p.student}.png" for p in GRID.pairs],
            caption="../report/curves.rst",
            category="Learning curves",
        ),
        links=report(
            [f"{REPORTS}/figures/links_{p.teacher}_{p.student}.png" for p in GRID.link_pairs()],
            caption="../report/links.rst",
            category="AFD links",
        ),
    params:
        config=json.dumps(config),
    shell:
        "afdistill report --config-json {params.config:q} --out {REPORTS} {input}"
