"""A sandbox HTCondor pool for machines without HTCondor.

`python -m relayd.sandbox init DIR` creates a pool whose bin/condor_ssh_to_job
has the real tool's command-line contract and starts a real `sshd -i` per
negotiation, so relayd's production code path runs unchanged in the demo and
the tests.  The Python API below plays the schedd (submit, hold, remove...).
"""

from .layout import PoolError, PoolLayout, PoolSettings
from .pool import (
                   configure_pool,
                   create_pool,
                   job_pids,
                   load_ads,
                   read_negotiations,
                   set_status,
                   sshd_pids,
                   stop_pool,
                   submit_cluster,
                   submit_job,
)

__all__ = ["PoolError", "PoolLayout", "PoolSettings", "configure_pool", "create_pool",
           "job_pids", "load_ads", "read_negotiations", "set_status", "sshd_pids",
           "stop_pool", "submit_cluster", "submit_job"]
