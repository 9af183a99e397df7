"""ProxyCommand (with ProxyUseFdpass) for the bench's `direct-tcp` host: start the given
`sshd -i` command on one end of a loopback TCP connection, as the starter starts the job's
sshd, and hand ssh the other end. ssh then talks to sshd over TCP with no process copying
in between, which is what the relay's upstream leg and the direct path have too; the
`direct` host's sshd reads and writes pipes instead, which cost less per byte.
"""

from __future__ import annotations

import socket
import subprocess
import sys


def main(argv: list[str]) -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ssh_end = socket.create_connection(listener.getsockname())
        sshd_end, _ = listener.accept()
    with sshd_end:
        subprocess.Popen(argv, stdin=sshd_end, stdout=sshd_end, start_new_session=True)
    with ssh_end, socket.socket(fileno=1) as to_ssh:
        socket.send_fds(to_ssh, [b"\0"], [ssh_end.fileno()])
        to_ssh.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
