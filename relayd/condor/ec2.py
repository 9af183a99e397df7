"""Grid-universe EC2 jobs: straight to the instance, as condor_ssh_to_job does for them.

condor_ssh_to_job ignores -ssh for EC2 jobs and runs `ssh -i <EC2KeyPairFile> <VM name>`,
so there is nothing to capture: the relay connects to the instance itself, authenticates
with the keypair HTCondor manages, and pins the instance's host key on first use.
"""

from __future__ import annotations

import socket
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.internet import threads

from relayd.common.errors import JobUnreachable
from relayd.condor.lookup import Ad
from relayd.condor.names import JobName
from relayd.condor.negotiate import Credentials
from relayd.ssh.job_keys import TrustOnFirstUse

CONNECT_TIMEOUT = 30.0


def _unmanaged(job: JobName) -> JobUnreachable:
    # the meaning of condor_ssh_to_job's "You can not SSH to an EC2 job whose keypair HTCondor is not managing."
    return JobUnreachable(
        f"job {job.job_id} is an EC2 job whose keypair HTCondor is not managing, or whose instance has no "
        "address yet (EC2KeyPairFile / EC2RemoteVirtualMachineName missing)"
    )


async def connect_instance(job: JobName, ad: Ad, user: str, pins: Path, port: int = 22) -> Credentials:
    """Open a TCP connection to the job's instance and return what the upstream leg needs."""
    host = ad.get("EC2RemoteVirtualMachineName")
    keypair = ad.get("EC2KeyPairFile")
    if not isinstance(host, str) or not host or host == "Undefined" or not isinstance(keypair, str) or not keypair:
        raise _unmanaged(job)
    try:
        key = keys.Key.fromFile(keypair)
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError) as exc:
        raise JobUnreachable(f"job {job.job_id}: cannot use the EC2 keypair file {keypair}: {exc}") from None
    try:
        sock = await threads.deferToThread(socket.create_connection, (host, port), CONNECT_TIMEOUT)
    except OSError as exc:
        raise JobUnreachable(f"job {job.job_id}: cannot reach EC2 instance {host} port {port}: "
                                f"{exc.strerror or exc}") from None
    pinned_as = host if port == 22 else f"[{host}]:{port}"
    return Credentials(user=user, private_key=key, host_key=TrustOnFirstUse(pins, pinned_as), job_socket=sock)
