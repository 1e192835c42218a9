"""The car/laptop boundary is the folder: the car's cli.py declares every command without importing
tools/ (Python 3.8+, may use TensorFlow), and every command whose work is done there refuses in one
line on an older Python, before it reads anything."""
import inspect
import os
import subprocess
import sys

from donkey_saliency import cli

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Each laptop command with arguments argparse accepts (none of the paths exists: nothing may be read).
LAPTOP_COMMANDS = {
    "bench": [], "demo": [], "backfill": ["tub", "--model", "pilot.h5"], "render": ["tub", "--out", "v.webm"],
    "layers": ["pilot.h5", "frame.png", "--out", "grid.png"], "filters": ["tub", "--model", "pilot.h5"],
    "evaluate": ["tub", "--model", "pilot.h5"], "audit": ["tub", "--model", "pilot.h5"],
}


def test_the_parser_is_built_without_importing_tools():
    script = ("import sys\nfrom donkey_saliency import cli\ncli.build_parser()\n"
              "print(sorted(m for m in sys.modules if m.startswith('donkey_saliency.tools')"
              " or m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=PROJECT, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "[]"


def test_the_commands_that_reach_tools_are_the_laptop_commands():
    reaching = {name for name, _, run in cli.COMMANDS if "laptop_tool(" in inspect.getsource(run)}
    assert reaching == set(LAPTOP_COMMANDS)


def test_every_laptop_command_refuses_in_one_line_on_an_older_python(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "LAPTOP_PYTHON", (99, 0))
    monkeypatch.chdir(tmp_path)
    for name, args in sorted(LAPTOP_COMMANDS.items()):
        assert cli.main([name] + args) == cli.EXIT_BAD_INPUT
        lines = capsys.readouterr().err.strip().splitlines()
        this = "%d.%d" % sys.version_info[:2]
        assert lines == ["donkey-saliency %s: needs Python 99.0 or newer (this is %s); run it on a laptop"
                         % (name, this)]
    assert os.listdir(str(tmp_path)) == []
