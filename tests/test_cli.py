"The `talkface` command as a user runs it."
import subprocess, sys
from pathlib import Path

TALKFACE = str(Path(sys.executable).parent / 'talkface')

def talkface(*args):
    return subprocess.run([TALKFACE, *args], capture_output=True, text=True)

def test_help_lists_every_stage():
    r = talkface('--help')
    assert r.returncode == 0
    for cmd in 'sample demo scenes filter crop convert landmarks pose aus audio run report'.split():
        assert f'  {cmd} ' in r.stdout

def test_unknown_command_is_a_clear_error():
    r = talkface('nonsense')
    assert r.returncode == 2 and "unknown command 'nonsense'" in r.stderr
