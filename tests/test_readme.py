"""The README's ALI-G+ snippet runs as written and learns; the AOV update is described in the right direction."""
import re
import subprocess
import sys
from pathlib import Path

NOTES = Path(__file__).resolve().parents[1] / "README.md"


def test_the_alig_plus_snippet_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", NOTES.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "ALIGPlus" in b)
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final_loss = float(re.search(r"final batch loss ([0-9.]+)", done.stdout).group(1))
    assert final_loss < 0.1  # a separable toy problem: ALI-G+ fits it


def test_the_aov_update_is_described_in_the_right_direction():
    text = NOTES.read_text()
    assert "moves UP halfway to that" in text and "moves DOWN by half its last increment" in text
