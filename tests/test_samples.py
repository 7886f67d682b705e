"""Every command in the samples' READMEs runs as written (from the repository root)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "samples").iterdir() if p.is_dir())


def commands(readme: Path):
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S):
        yield from (line for line in block.splitlines() if line.strip())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_readme_commands(sample, tmp_path):
    cmds = list(commands(sample / "README.md"))
    assert cmds, f"{sample.name}: no commands in README"
    for cmd in cmds:
        argv = shlex.split(cmd.replace("out/samples", str(tmp_path)))
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "tost-edge":
            argv = [sys.executable, "-m", "tost_edge.cli"] + argv[1:]
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        if "trained_bundle" in cmd and "stream_tokens" in cmd:   # the trained model continues its task
            assert "generated 16 tokens: [5, 6, 7, 8, 9, 10," in r.stdout, r.stdout
        if "many_streams" in cmd:
            assert "each equal to its solo run: True" in r.stdout and "matches: True" in r.stdout
