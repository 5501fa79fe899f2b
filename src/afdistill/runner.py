"""Running one planned job: what ``afdistill run`` does, and so what every pipeline rule does.

The pipeline's rule hands the job over as JSON (:meth:`afdistill.jobs.Job.to_json`), planned and checked
in the Snakemake process; by hand, ``afdistill run --grid FILE FOLDER`` plans the grid and picks the job
by its folder. Either way the job's kind runs it (:mod:`afdistill.kinds`), and its fingerprint marker is
written last, only after everything else of the job is in place.
"""

from __future__ import annotations

from .jobs import Job, Plan, write_marker


class StaleJob(ValueError):
    """The grid or the code changed between planning a job and running it."""


def find(plan: Plan, folder: str, fingerprint: str | None = None) -> Job:
    """The plan's job in ``folder``; with ``fingerprint``, refuse a job that changed since it was planned."""
    try:
        job = plan.find(folder)
    except KeyError:
        folders = [job.folder for job in plan.jobs]
        raise ValueError(
            f"{folder} is not a job of grid {plan.grid.name!r} ({plan.grid.source}); "
            f"its {len(folders)} jobs include {', '.join(folders[:3])}, ..."
        ) from None
    if fingerprint is not None and fingerprint != job.fingerprint:
        raise StaleJob(
            f"{folder}: the grid or the code changed since this job was planned (fingerprint "
            f"{fingerprint}, now {job.fingerprint}); run snakemake again to plan it anew"
        )
    return job


def run(job: Job, threads: int = 0, log=print, log_file: str | None = None) -> Job:
    """Run a job by its kind; the marker last (in a data-parallel job, by rank 0 alone)."""
    from .distributed import from_environment

    job.kind.code.run(job, threads, log, log_file)
    if from_environment().is_main:
        write_marker(job)
    return job
