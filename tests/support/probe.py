"""Running ``python -m txschannel probe`` as a user would, from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.twist import REPO


def run_probe(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run the probe as a user would, from the repository checkout."""
    path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    environment = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "txschannel", "probe", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=environment,
    )
