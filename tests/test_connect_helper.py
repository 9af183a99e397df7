"""`relayd connect` runs before every ssh connection: it must stay stdlib-only and small."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from relayd.cli import main
code = main(["connect", "--no-start", "--socket", sys.argv[1], "job-1.0.condor", "22"])
print(json.dumps([code, sorted(sys.modules)]))
"""


def test_the_helper_imports_only_the_standard_library(tmp_path):
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "absent.sock")], capture_output=True,
                          text=True, cwd=tmp_path)
    code, modules = json.loads(done.stdout)
    assert code == 255 and "the relay daemon is not running" in done.stderr
    ours = {"relayd", "clientconf"}
    foreign = [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names | ours
               and not m.startswith(("__editable__", "_distutils_hack", "__main__"))]
    assert foreign == []
    assert {m for m in modules if m.split(".")[0] in ours} == {
        "relayd", "relayd.cli", "relayd.humanize", "relayd.paths", "relayd.protocol",
        "clientconf", "clientconf.autostart", "clientconf.connect", "clientconf.progress",
    }
