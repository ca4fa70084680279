"""Children that kill themselves at a fixed step (SIGKILL), shared by the fault tests."""
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Tuple

ROOT = Path(__file__).resolve().parents[2]

Children = Dict[str, Tuple[Path, "subprocess.Popen[str]"]]


def spawn(tmp_path_factory, module: str, kills: Dict[str, int]) -> Iterator[Children]:
    """Starts ``python -m MODULE SCENARIO FOLDER STEP`` for every scenario at once (most of a
    child's time is importing torch); yields ``{scenario: (folder, process)}``; afterwards kills
    what a test that failed early left running."""
    procs: Children = {}
    for scenario, step in kills.items():
        folder = tmp_path_factory.mktemp(scenario)
        procs[scenario] = (folder, subprocess.Popen(
            [sys.executable, "-m", module, scenario, str(folder), str(step)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    yield procs
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None and not proc.stderr.closed:
            proc.stderr.close()


def killed(children: Children, scenario: str) -> Path:
    """The scenario's folder, once its child has died of its own SIGKILL."""
    folder, proc = children[scenario]
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
    return folder
