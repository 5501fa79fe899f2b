"""Running one planned job: what ``afdistill run`` does, and so what every pipeline rule does.

The pipeline's rule hands the job over as JSON (:meth:`afdistill.jobs.Job.to_json`), planned and checked
in the Snakemake process; by hand, ``afdistill run --grid FILE FOLDER`` plans the grid and picks the job
by its folder. Either way the job's kind runs it (:mod:`afdistill.kinds`), and its fingerprint marker is
written last, only after everything else of the job is in place.
"""

from __future__ import annotations

from .jobs import Job, Plan, write_marker


class PackFailed(RuntimeError):
    """Some students of a pack failed; the others' results and markers are written."""


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


def run_pack(jobs: list[Job], threads: int = 0, log=print, log_file: str | None = None) -> list[Job]:
    """Run jobs of one pack in this process (one job: :func:`run`): their kind trains them together
    (``run_pack``), and each one that succeeded gets its marker even if another failed."""
    from .distributed import from_environment

    if len(jobs) == 1:
        return [run(jobs[0], threads, log, log_file)]
    kinds = {job.kind.name for job in jobs}
    code = jobs[0].kind.code
    keys = {code.pack_key(job) for job in jobs} if hasattr(code, "pack_key") and len(kinds) == 1 else set()
    if len(keys) != 1:
        raise ValueError(
            f"{', '.join(job.folder for job in jobs)}: these jobs do not train as one pack; only jobs of one kind "
            "that read the same data, teacher and batches do (`afdistill jobs` shows the packs)"
        )
    outcomes = code.run_pack(jobs, threads, log, log_file)
    failed = [(job, outcome) for job, outcome in zip(jobs, outcomes) if isinstance(outcome, Exception)]
    if from_environment().is_main:
        for job, outcome in zip(jobs, outcomes):
            if not isinstance(outcome, Exception):
                write_marker(job)
    if failed:
        raise PackFailed(
            f"{len(failed)} of the pack's {len(jobs)} jobs failed (the others' results are written): "
            + "; ".join(f"{job.folder}: {type(error).__name__}: {error}" for job, error in failed)
        )
    return jobs
