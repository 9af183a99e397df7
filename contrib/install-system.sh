#!/bin/sh
# Install condor-relay once for every user of an access point (run as root):
#
#   sh contrib/install-system.sh install dist/condor_relay-0.1.0-py3-none-any.whl
#   sh contrib/install-system.sh upgrade dist/condor_relay-0.2.0-py3-none-any.whl
#   sh contrib/install-system.sh remove
#
# install: a venv in $PREFIX (/opt/condor-relay) holding the wheel and its dependencies;
# relayd, condor-relay-connect and condor-relay-capture linked into $BINDIR (/usr/bin);
# the systemd user units in $UNITDIR (/usr/lib/systemd/user), enabled for all users
# (systemctl --global) where systemctl exists; and the ssh_config drop-in for all users
# (relayd ssh-config install --system; $SSH_DROPIN names another file, e.g. for a test).
# upgrade: the new wheel into the same venv, and the drop-in rewritten. remove: all of it
# (users' own state under ~/.local/state/condor-relay stays). The site config,
# /etc/condor-relay/config.yaml, is the administrator's and is never touched.
set -eu
PREFIX=${PREFIX:-/opt/condor-relay}
BINDIR=${BINDIR:-/usr/bin}
UNITDIR=${UNITDIR:-/usr/lib/systemd/user}
PYTHON=${PYTHON:-python3}
COMMANDS="relayd condor-relay-connect condor-relay-capture"
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "install-system.sh: $*" >&2; exit 1; }

dropin() {
    if [ -n "${SSH_DROPIN:-}" ]; then
        "$PREFIX/bin/relayd" ssh-config "$1" --system --file "$SSH_DROPIN"
    else
        "$PREFIX/bin/relayd" ssh-config "$1" --system
    fi
}

units() {
    command -v systemctl >/dev/null 2>&1 || return 0
    [ "$UNITDIR" = /usr/lib/systemd/user ] || return 0
    systemctl --global "$1" condor-relay.socket \
        || echo "install-system.sh: 'systemctl --global $1' failed; the helper starts daemons on demand anyway" >&2
}

install_wheel() {
    [ -f "$1" ] || die "no wheel at $1 (build one with: python3 -m build --wheel)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$PYTHON is older than 3.10; set PYTHON (EL 8/9: PYTHON=python3.11)"
    if [ ! -x "$PREFIX/bin/python" ]; then
        "$PYTHON" -m venv "$PREFIX" || die "cannot create a venv in $PREFIX (Debian: apt-get install python3-venv)"
    fi
    "$PREFIX/bin/pip" install --quiet --upgrade "$1"
    mkdir -p "$BINDIR" "$UNITDIR"
    for command in $COMMANDS; do
        ln -sfn "$PREFIX/bin/$command" "$BINDIR/$command"
    done
    for unit in condor-relay.socket condor-relay.service; do
        sed "s|^ExecStart=/usr/bin/relayd|ExecStart=$BINDIR/relayd|" "$here/system/$unit" >"$UNITDIR/$unit"
        chmod 644 "$UNITDIR/$unit"
    done
    chmod -R a+rX "$PREFIX"
    dropin install
}

case "${1:-}" in
install)
    [ $# -eq 2 ] || die "usage: install-system.sh install WHEEL"
    install_wheel "$2"
    units enable
    ;;
upgrade)
    [ $# -eq 2 ] || die "usage: install-system.sh upgrade WHEEL"
    [ -x "$PREFIX/bin/relayd" ] || die "nothing installed in $PREFIX; use install"
    install_wheel "$2"
    echo "running daemons keep the old version until they exit idle (exit_when_idle) or 'relayd stop'"
    ;;
remove)
    [ -x "$PREFIX/bin/relayd" ] && dropin uninstall
    units disable
    for command in $COMMANDS; do
        [ -L "$BINDIR/$command" ] && rm -f "$BINDIR/$command"
    done
    rm -f "$UNITDIR/condor-relay.socket" "$UNITDIR/condor-relay.service"
    rm -rf "$PREFIX"
    ;;
*)
    die "usage: install-system.sh install WHEEL | upgrade WHEEL | remove"
    ;;
esac
