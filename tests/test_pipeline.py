"`talkface run` end to end: layout, resume after SIGKILL, the Ray engine, status, batch."
import hashlib, json, os, shutil, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import pytest
from talkface.core import Layout
from talkface.status import status_text
from conftest import BIN, STAGES, make_inputs, tree_hashes


def test_outputs_follow_the_original_layout(reference):
    _, root, counts = reference
    assert counts['scenes'] == {'ok': 2}
    for st in ('filter', 'crop', 'convert', 'landmarks', 'pose', 'aus', 'audio'):
        assert counts[st].get('ok', 0) == 4, (st, counts[st])   # two scenes per sample
    lay = Layout(root)
    clips = sorted(p.stem for p in lay.dir('videos_25fps').glob('*.mp4'))
    assert len(clips) == 4
    for c in clips:
        assert lay.path('audios_16k', c, '.wav').exists()
        assert (lay.path('frames', c) / '000001.png').exists()
        assert lay.path('landmarks', c, '.txt').exists() and lay.path('landmarks', c, '.npy').exists()
        assert lay.path('pose_data', c, '.npy').exists()
        assert not lay.path('pose_vis', c, '.mp4').exists()       # the preview only with --keep pose_video
        assert (lay.path('aus', c) / f'{c}.csv').exists()
        assert lay.path('mfcc', c, '.npy').exists()
    assert not list(lay.dir('raw').glob('*.mp4'))          # kept clips are read in place: raw_data/ only with --keep scenes
    assert not list(root.rglob('.*.tmp-*'))


def test_status_counts_and_clips(reference):
    _, root, _ = reference
    text = status_text(root, scenes=True)
    assert 'landmarks' in text and 'sample0-Scene-001' in text
    r = subprocess.run([BIN / 'talkface', 'status', str(root), '--clips'], capture_output=True, text=True)
    assert r.returncode == 0
    lines = r.stdout.split('\ninput clip ')[1].splitlines()[1:]       # one line per input file
    assert [l.split()[:4] for l in lines] == [['sample0', 'audio', 'ok', '2'], ['sample1', 'audio', 'ok', '2']], lines
    r = subprocess.run([BIN / 'talkface', 'status', str(root), '--scenes'], capture_output=True, text=True)
    assert r.returncode == 0 and 'sample1-Scene-002' in r.stdout


def test_sigkill_then_rerun_gives_identical_outputs(reference, tmp_path):
    inp, ref_root, _ = reference
    out = tmp_path / 'out'
    cmd = [str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', STAGES, '--workers', '2']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # kill the whole run (driver and workers) once some stages are done and others are running
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            n = sqlite3.connect(out / 'manifest.sqlite').execute("SELECT COUNT(*) FROM results WHERE stage='convert'").fetchone()[0]
        except sqlite3.Error: n = 0
        if n >= 1: break
    assert proc.poll() is None, 'the run finished before it could be killed'
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'Traceback' not in r.stderr
    assert tree_hashes(out) == tree_hashes(ref_root)


def test_the_ffmpeg_on_path_changes_nothing(reference, tmp_path):
    "An ffmpeg first on PATH is never run (here a stand-in that fails, so any use would show): the same bytes as the reference."
    inp, ref_root, _ = reference
    fake = tmp_path / 'bin' / 'ffmpeg'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "ffmpeg version 4.0 (a stand-in that always fails)" >&2\nexit 1\n'); fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")   # TALKFACE_FFMPEG, if set, as for the reference
    out = tmp_path / 'out'
    r = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', 'scenes,filter,crop,convert',
                        '--workers', '2'], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got, ref = tree_hashes(out), tree_hashes(ref_root)
    assert len(got) > 20 and got == {k: v for k, v in ref.items() if k in got}
    assert json.loads((out / 'run.json').read_text())['ffmpeg'] == json.loads((ref_root / 'run.json').read_text())['ffmpeg']


def test_a_chosen_ffmpeg_that_is_too_old_stops_the_run_at_start(tmp_path):
    old = tmp_path / 'ffmpeg'
    old.write_text('#!/bin/sh\necho "ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright (c) 2000-2021"\n'); old.chmod(0o755)
    inp = make_inputs(tmp_path, 1)
    r = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(tmp_path / 'out')], capture_output=True, text=True,
                       env={**os.environ, 'TALKFACE_FFMPEG': str(old)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'ffmpeg 4.4.2-0ubuntu0.22.04.1 is too old: talkface needs ffmpeg 5.1 or newer' in r.stderr
    assert not (tmp_path / 'out' / 'manifest.sqlite').exists()


def test_ray_engine_gives_the_same_outputs(reference, tmp_path):
    pytest.importorskip('ray')
    inp, ref_root, _ = reference
    out = tmp_path / 'out'
    r = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', STAGES,
                        '--engine', 'ray', '--workers', '2'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_hashes(out) == tree_hashes(ref_root)


def test_second_run_on_the_same_root_refuses(tmp_path):
    from talkface.pipeline import RunLock
    inp = make_inputs(tmp_path, 1)
    (tmp_path / 'out').mkdir()
    with RunLock(tmp_path / 'out'):
        r = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(tmp_path / 'out')],
                           capture_output=True, text=True)
    assert r.returncode == 1 and 'another talkface run is using this output folder' in r.stderr


def test_keep_scenes_copies_kept_clips_and_resumes(tmp_path):
    "Without --keep scenes a run reads kept clips in place; a rerun that keeps them copies them, from the stored scores."
    from talkface.core import Manifest
    from talkface.pipeline import RunConfig, run_pipeline
    inp, out = make_inputs(tmp_path, 1), tmp_path / 'out'
    run_pipeline(RunConfig(input=str(inp), output=str(out), stages='scenes,filter', workers=1)).close()
    lay, m = Layout(out), Manifest(out)
    kept = sorted(r['clip'] for r in m.rows() if r['stage'] == 'filter' and r['status'] == 'ok')
    assert kept == ['sample0-Scene-001', 'sample0-Scene-002'] and not list(lay.dir('raw').glob('*.mp4'))
    scenes = m.get('sample0', 'scenes').figures
    assert scenes['scene_times'][0][0] == 0.0 and scenes['scene_times'][0][1] == scenes['cut_times'][0]   # source and range recorded
    m.close()
    run_pipeline(RunConfig(input=str(inp), output=str(out), stages='scenes,filter', workers=1, keep='scenes')).close()
    assert sorted(p.stem for p in lay.dir('raw').glob('*.mp4')) == kept
    m = Manifest(out)
    assert all(m.get(c, 'filter').figures['scores_reused'] for c in kept)   # decided again without decoding
    m.close()
