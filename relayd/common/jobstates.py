"""HTCondor's job states and universes, as the schedd and htcondor2 number them: one
definition for the lookups, the watch and the sandbox pool."""

from __future__ import annotations

# htcondor2.JobStatus
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)
STATUS_BY_NAME = {"idle": IDLE, "running": RUNNING, "removed": REMOVED, "completed": COMPLETED, "held": HELD,
                  "transferring_output": TRANSFERRING_OUTPUT, "suspended": SUSPENDED}
STATUS_NAMES = {value: name for name, value in STATUS_BY_NAME.items()}

# JobUniverse (condor_universe.h)
VANILLA, SCHEDULER, MPI, GRID, PARALLEL = 5, 7, 8, 9, 11
UNIVERSE_BY_NAME = {"vanilla": VANILLA, "scheduler": SCHEDULER, "grid": GRID, "parallel": PARALLEL}
UNIVERSE_NAMES = {value: name for name, value in UNIVERSE_BY_NAME.items()} | {MPI: "mpi"}
