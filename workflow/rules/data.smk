rule prepare_data:
    """Prepared dataset (uint8 arrays + meta.json), the input of every training job."""
    output:
        **data_files("{dataset}"),
    params:
        options=" ".join(
            [f"--root {GRID.data_root}"]
            + (["--download"] if GRID.download else [])
            + ([] if GRID.verify_checksums else ["--no-verify"])
        ),
    shell:
        "afdistill prepare --dataset {wildcards.dataset} --out data/{wildcards.dataset} {params.options}"
