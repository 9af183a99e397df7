#!/bin/sh
# Checks the system programs condor-relay's demo and tests run for real
# (xauth: sshd needs it in the job for X11 forwarding, which the tests exercise).
missing=""
for pair in ssh:openssh-client scp:openssh-client sftp:openssh-client ssh-keygen:openssh-client \
            /usr/sbin/sshd:openssh-server rsync:rsync xauth:xauth; do
    prog=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$prog" >/dev/null 2>&1; then
        case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
    fi
done
if [ -n "$missing" ]; then
    echo "condor-relay needs these system packages:$missing" >&2
    echo "install them with: sudo apt-get install$missing" >&2
    exit 1
fi
