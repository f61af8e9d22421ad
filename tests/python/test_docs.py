"""docs/python.md as written: its example block run with /usr/bin/python3 and
Debian's packages against the test server, and its offline install command
(venv with --system-site-packages, pip --no-build-isolation --no-index)
followed by the example with the venv's python."""

import os
import re
import subprocess

from conftest import BUILD, ROOT

DOC = ROOT / "docs" / "python.md"


def block(heading, lang):
    """The first ```lang block after `## heading`."""
    text = DOC.read_text()
    section = text[text.index(f"## {heading}\n"):]
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"docs/python.md has no ```{lang} block under '## {heading}'"
    return m.group(1)


def expected_output():
    text = DOC.read_text()
    section = text[text.index("## Example\n"):]
    m = re.search(r"prints\n\n((?:    .*\n)+)", section)
    return [line[4:] for line in m.group(1).splitlines()]


def run_example(python, server, tmp_path, env):
    script = tmp_path / "example.py"
    script.write_text(block("Example", "python"))
    out = subprocess.run([python, str(script)], env=dict(env, QLINEAR_TARGET=server.target),
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected_output()


def debian_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_the_example_runs_as_written_with_debian_python(server, tmp_path):
    run_example("/usr/bin/python3", server, tmp_path, dict(debian_env(), PYTHONPATH=str(BUILD / "python")))


def test_the_documented_offline_install_works(server, tmp_path):
    lines = [l for l in block("Install it (offline, Debian 12)", "sh").splitlines() if l.strip()]
    assert lines[0].startswith("cmake --build build --target qlinear_python")  # done by the build
    venv = tmp_path / "venv"
    env = dict(debian_env(), QLINEAR_BUILD_DIR=str(BUILD))
    for line in lines[1:]:
        cmd = line.replace("/tmp/qlinear-venv", str(venv))
        out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    run_example(str(venv / "bin" / "python"), server, tmp_path, debian_env())
