"""The VS Code debug configurations for the workbench itself are valid, tracked, and run what they say."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_launch_json_has_app_and_tests_and_is_not_ignored():
    path = ROOT / ".vscode" / "launch.json"
    configs = {c["name"]: c for c in json.loads(path.read_text())["configurations"]}
    assert configs["app"]["module"] == "streamlit" and configs["app"]["args"][:2] == ["run", "app.py"]
    assert configs["tests"]["module"] == "pytest" and "tests" in configs["tests"]["args"]
    assert all(c["type"] == "debugpy" and c["request"] == "launch" for c in configs.values())
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
    assert ignored.returncode == 1, ".gitignore must not exclude .vscode/launch.json"
