"The hand-off's commands and its place in the pipeline: identity as a stage with speaker ids after the run, export, rebuild."
import shutil, subprocess, sys
from pathlib import Path
import pandas as pd
from talkface.core import Manifest
from talkface.sample import demo_sample

TALKFACE = str(Path(sys.executable).parent / 'talkface')


def talkface(*args):
    return subprocess.run([TALKFACE, *map(str, args)], capture_output=True, text=True)


def test_help_lists_the_handoff_commands():
    out = talkface('--help').stdout
    for cmd in ('identity', 'export', 'rebuild'): assert f'  {cmd} ' in out


def test_run_has_an_identity_stage_and_assigns_speakers_after_it(tmp_path):
    inp = tmp_path / 'in'; inp.mkdir()
    shutil.copy(demo_sample(), inp / 'sample.mp4')
    r = talkface('run', '--input', inp, '--output', tmp_path / 'root', '--stages', 'scenes,filter,crop,convert,landmarks,identity',
                 '--workers', 2)
    assert r.returncode == 0, r.stderr
    assert 'identity' in r.stdout
    m = Manifest(tmp_path / 'root'); rows = m.rows('identity'); m.close()
    assert len(rows) == 2 and all(x['status'] == 'ok' for x in rows)
    assert len({x['figures']['speaker'] for x in rows}) == 1                 # the sample's two shots: one speaker, set by the finish hook
    assert (tmp_path / 'root/specified_formats/videos/identity/sample-Scene-002.json').is_file()


def test_identity_export_and_rebuild_commands(handoff_root, tmp_path):
    inp, root0 = handoff_root
    root = tmp_path / 'root'
    shutil.copytree(root0, root)
    shutil.rmtree(root / 'specified_formats/videos/identity')              # the command redoes what is missing, then the speakers
    r = talkface('identity', '--root', root)
    assert r.returncode == 0 and 'talkface identity:' in r.stdout, r.stderr
    m = Manifest(root); rows = m.rows('identity'); m.close()
    assert rows and all(x['figures'].get('speaker') for x in rows if x['status'] == 'ok')
    r = talkface('export', root, '--to', tmp_path / 'out', '--format', 'folder', '--split', 'train=0.5,val=0.5', '--seed', 1)
    assert r.returncode == 0 and 'talkface export:' in r.stdout, r.stderr
    meta = pd.read_parquet(tmp_path / 'out' / 'metadata.parquet')
    assert meta.groupby('speaker')['split'].nunique().max() == 1 and (tmp_path / 'out' / 'README.md').is_file()
    r = talkface('export', root, '--to', tmp_path / 'rel', '--format', 'metadata')
    assert r.returncode == 0, r.stderr
    r = talkface('rebuild', tmp_path / 'rel' / 'metadata.parquet', '--sources', inp, '--output', tmp_path / 'rebuilt')
    assert r.returncode == 0 and f'talkface rebuild: {len(meta)} clip(s): {len(meta)} ok' in r.stdout, (r.stdout, r.stderr)
    Manifest(tmp_path / 'empty').close()
    r = talkface('export', tmp_path / 'empty', '--to', tmp_path / 'o')
    assert r.returncode == 2 and 'no clip to export' in r.stderr and not (tmp_path / 'o').exists()   # refused: nothing written
