"""README's Quickstart curl session against a real gunicorn, answered as documented."""

import re
import shutil
import subprocess

from support import Gunicorn, code_blocks, missing


def test_quickstart_curl_session(tmp_path, model_path):
    if not shutil.which("curl"):
        missing("curl", ".ci/run installs Debian's curl")
    block = next(b for b in code_blocks() if b.startswith("curl"))
    with Gunicorn(tmp_path, model_path, workers=2) as server:
        script = block.replace("http://127.0.0.1:8000", server.url)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr
    assert '{"status":"ok"}' in out.stdout
    assert re.search(r'\{"id":42,"Calories":\d+\.\d+\}', out.stdout)
    assert '{"id":42,"outcome":"matched"}' in out.stdout
    assert re.search(r"^app_rolling_pairs_5m 1\.0$", out.stdout, re.MULTILINE)
