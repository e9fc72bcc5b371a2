"""The architecture holds: `lint-imports` checks pyproject.toml's layer contract over the code as it is.

Each layer imports only those below it (command > tools > local mode > components > Kubernetes > relay >
core) and the four components (scaler, activator, gateway, queue_proxy) never import each other, so a
change that reaches upward or sideways fails here, naming the import and its line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.is_file(), "import-linter is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
