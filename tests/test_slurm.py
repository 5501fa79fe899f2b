"""A tiny grid through profiles/slurm on a real one-node Slurm cluster (Debian's slurmctld, slurmd, munge).

The fixture starts munged, slurmctld and slurmd in the foreground as children of the test and stops them by
their PIDs. The cluster is CPU only and has no accounting database, so the run uses the profile's documented
switches for that: `--config device=cpu` and `--slurm-status-command squeue` (with MinJobAge = 120 s), plus
`--slurm-no-account` and short status-check intervals to keep the test quick.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY_GRID, make_project, run, tool_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
# The SLURM plugin's job step runs `srun` with the SLURM_* variables stripped (SLURM_CONF too), so the
# configuration must be where Slurm looks by default.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
OURS = "# written by afdistill's tests/test_slurm.py\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "slurmd must run as root"
    absent = [path for path in [*DAEMONS.values(), shutil.which("sbatch") or "sbatch"] if not Path(path).exists()]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)}): apt-get install slurmctld slurmd slurm-client munge"
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(OURS):
        return f"{SLURM_CONF} belongs to a real Slurm installation; not touching it"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    for folder in ("munge", "state", "spool"):
        (base / folder).mkdir()
    os.chmod(base / "munge", 0o755)  # clients reach the socket through it
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    socket_path = base / "munge" / "munge.socket"
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(
        OURS
        + "\n".join(
            [
                "ClusterName=afdistill-test",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                f"AuthInfo=socket={socket_path}",
                "CredType=cred/munge",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={base / 'state'}",
                f"SlurmdSpoolDir={base / 'spool'}",
                f"SlurmctldPidFile={base / 'slurmctld.pid'}",
                f"SlurmdPidFile={base / 'slurmd.pid'}",
                f"SlurmctldLogFile={base / 'slurmctld.log'}",
                f"SlurmdLogFile={base / 'slurmd.log'}",
                # no cgroups in a container: plain process tracking, no task binding
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/backfill",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "MinJobAge=120",  # the plugin trusts squeue for job states only from 120 s on
                "ReturnToService=2",
                "MpiDefault=none",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            ]
        )
        + "\n"
    )
    commands = {
        "munged": [
            DAEMONS["munged"],
            "--foreground",
            "--force",
            f"--socket={socket_path}",
            "--key-file=/etc/munge/munge.key",
            f"--log-file={base / 'munged.log'}",
            f"--pid-file={base / 'munged.pid'}",
            f"--seed-file={base / 'munged.seed'}",
        ],
        "slurmctld": [DAEMONS["slurmctld"], "-D", "-i", "-f", str(SLURM_CONF)],
        "slurmd": [DAEMONS["slurmd"], "-D", "-N", host, "-f", str(SLURM_CONF)],
    }
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
    daemons = []
    try:
        for name, command in commands.items():
            log = open(base / f"{name}.out", "w")
            daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1.0)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(1.0)
        else:
            logs = "\n".join((base / f"{name}.out").read_text()[-1500:] for name in commands)
            pytest.fail(f"the Slurm node never became idle (sinfo: {state!r}):\n{logs}")
        yield base
    finally:
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if SLURM_CONF.exists() and SLURM_CONF.read_text().startswith(OURS):
            SLURM_CONF.unlink()


def test_a_tiny_grid_runs_through_the_slurm_profile(slurm_cluster, tmp_path):
    # Data; the teacher (the table's first row) beside two students that need none; the report.
    grid = dict(TINY_GRID, seeds=[0, 1], methods={"vanilla": {}})
    project = make_project(tmp_path / "project", grid)
    started = time.monotonic()
    result = run(
        [
            "snakemake",
            "--profile",
            "profiles/slurm",
            "--workflow-profile",
            "none",
            "--config",
            "device=cpu",
            "--slurm-status-command",
            "squeue",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--seconds-between-status-checks",
            "1",
        ],
        cwd=project,
        env=tool_env(),
        timeout=900,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    submitted = output.count("has been submitted with SLURM jobid")
    assert submitted == 5, output[-3000:]  # each job of the grid is its own SLURM job
    assert "--gpus" not in output and "gpu=1" not in output  # a CPU partition: no GPU asked for
    table = (project / "reports/default/table.md").read_text()
    assert re.search(r"^\| Student \| [0-9.]+ ± [0-9.]+ \|$", table, re.M), table  # both seeds in the cell
    # SLURM's own logs are kept beside each job's log.
    slurm_logs = list((project / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == 5 and all(path.stat().st_size > 0 for path in slurm_logs)
    assert len(list((project / "logs").rglob("*.log"))) == 5
    print(f"tiny grid through Slurm: 5 jobs in {seconds:.0f} s")


def test_a_slurm_run_that_would_load_the_local_profile_is_refused(tmp_path):
    project = make_project(tmp_path / "project", dict(TINY_GRID, methods={"vanilla": {}}), dvc=False)
    result = run(["snakemake", "-n", "--profile", "profiles/slurm", "--config", "device=cpu"], cwd=project, check=False)
    assert result.returncode != 0
    assert "add --workflow-profile none" in result.stdout + result.stderr
