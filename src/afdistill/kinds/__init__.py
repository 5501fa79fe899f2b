"""The pipeline's job kinds, one module each, registered here in pipeline order.

A kind's module declares ``KIND`` (its folder, files, Snakemake rule and
target, the grid keys it reads) and defines three functions:

* ``expand(plan)``: add the grid's jobs of this kind to the plan
  (:class:`afdistill.jobs.Plan`), each with the jobs it reads;
* ``check(grid)``: what must hold before any job of the kind starts, beyond
  the grid's own parse (a method's fit to its networks' shapes, say);
* ``run(job, threads, log, log_file)``: what one job does, from the job alone
  (its spec, its inputs' folders, its settings): a job never re-reads the grid.

A kind whose jobs can train together (students, heads) also defines
``pack_key(job)`` (jobs with equal keys read the same data, teacher and
batches) and ``run_pack(jobs, threads, log, log_file)``, which trains them in
one process and returns each one's record or the error that ended it
(:func:`afdistill.jobs.packs`, :func:`afdistill.runner.run_pack`).

Snakemake's rules, the DVC stages, ``afdistill run`` and the report's inputs
all derive from :data:`KINDS`. Adding a kind is one module and its line in
``KINDS``; a kind reads only kinds registered before it.
"""

from __future__ import annotations

from . import data, heads, links, report, student, teacher
from .kind import Kind

#: In pipeline order. A kind's jobs read only jobs of earlier kinds.
KINDS: dict[str, Kind] = {module.KIND.name: module.KIND for module in (data, teacher, links, heads, student, report)}

__all__ = ["KINDS", "Kind"]
