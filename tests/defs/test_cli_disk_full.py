"""A full disk under LEARNALIGN_HOME is reported in one line that says what to do, not as a library's traceback.

The disk fills at the command's first write under the home (an audit hook raises ENOSPC there, as the fault-injection
harness does); the full-disk trials of `scripts/fault_injection.py --full-disk` fill a real size-limited tmpfs, where
SQLite says "database or disk is full" instead.
"""

import subprocess
import sys
from pathlib import Path

from learnalign_pipeline.cli import disk_full

ROOT = Path(__file__).resolve().parents[2]

FULL_AT_FIRST_WRITE = """
import errno, os, sys
home = os.path.abspath(os.environ["LEARNALIGN_HOME"])
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.abspath(args[0]).startswith(home):
        if isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
sys.addaudithook(hook)
from learnalign_pipeline import cli
sys.exit(cli.main(["demo", "--preset", "smoke"]))
"""


def test_a_full_disk_is_one_line_that_says_what_to_do(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LEARNALIGN_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", FULL_AT_FIRST_WRITE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"the disk under {tmp_path / 'home'} is full" in done.stderr
    assert "run the same command again" in done.stderr


def test_disk_full_reads_the_whole_chain():
    sqlite = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise ValueError("writing the artifact failed") from inner
    except ValueError as outer:
        assert disk_full(outer)
    assert disk_full(sqlite)
    assert not disk_full(ValueError("bad setting")) and not disk_full(OSError(13, "Permission denied"))
