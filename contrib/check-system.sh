#!/bin/sh
# Checks the system programs condor-relay's demo and tests run for real
# (xauth: sshd needs it in the job for X11 forwarding, which the tests exercise),
# and installs the missing ones when run as root (apt-get, or dnf where present);
# otherwise prints the command that would.
missing=""
for pair in ssh:openssh-client scp:openssh-client sftp:openssh-client ssh-keygen:openssh-client \
            /usr/sbin/sshd:openssh-server rsync:rsync xauth:xauth venv:python3-venv; do
    prog=${pair%%:*}; pkg=${pair#*:}
    if [ "$prog" = venv ]; then
        python3 -c 'import ensurepip, venv' 2>/dev/null && continue
    elif command -v "$prog" >/dev/null 2>&1; then
        continue
    fi
    case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
done
[ -z "$missing" ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
    install="apt-get install -y$missing"
    refresh="apt-get update -qq"
elif command -v dnf >/dev/null 2>&1; then
    # EL names; python3's venv is part of python3 there
    missing=$(echo "$missing" | sed 's/openssh-client/openssh-clients/; s/xauth/xorg-x11-xauth/; s/ python3-venv//')
    install="dnf install -y$missing"
    refresh=true
else
    echo "condor-relay needs these system packages:$missing (install them with your package manager)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "condor-relay needs these system packages:$missing" >&2
    echo "install them with: sudo $install" >&2
    exit 1
fi
echo "condor-relay: installing$missing ($install)" >&2
export DEBIAN_FRONTEND=noninteractive
$refresh && $install >&2 || { echo "condor-relay: '$install' failed" >&2; exit 1; }
