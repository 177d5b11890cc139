"""The main job's terminal shows chemgen's output only; everything else lands in the log file."""

import subprocess
import sys

SCRIPT = """
import os, sys, warnings, subprocess
from pathlib import Path
from chemgen.flows.quiet import output_to_log
with output_to_log(Path(sys.argv[1])) as terminal:
    print("library print")
    warnings.warn("a deprecation notice")
    os.write(2, b"raw stderr bytes\\n")
    subprocess.run([sys.executable, "-c", "print('child process output')"], check=True)
    terminal.write("chemgen progress\\n")
print("after the block")
"""


def test_output_to_log_separates_library_noise_from_chemgen(tmp_path):
    log = tmp_path / "logs" / "run.log"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "chemgen progress\nafter the block\n" and result.stderr == ""
    text = log.read_text()
    for noise in ("library print", "a deprecation notice", "raw stderr bytes", "child process output"):
        assert noise in text
