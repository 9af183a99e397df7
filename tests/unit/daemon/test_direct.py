"""Which ssh users the direct path lets through to the job's sshd before negotiating for them."""

from __future__ import annotations

import pytest

from relayd.daemon.direct import FAKE_PASSWD_USER, refused_login


@pytest.mark.parametrize(("asked", "sshd_user", "refused"), [
    ("alice", "alice", False),  # the job runs as its owner, who logs in as themself
    ("alice", "slot1_1", True),  # a real slot account takes only its own name
    (None, "slot1_1", False),  # ssh's default user: not known to the daemon, sshd decides
    ("alice", FAKE_PASSWD_USER, False),  # HTCondor's fake getpwnam: any name, as the job's uid
    ("anybody", FAKE_PASSWD_USER, False),
])
def test_only_a_real_account_is_checked(asked, sshd_user, refused):
    assert refused_login(asked, sshd_user) is refused
