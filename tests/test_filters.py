"Filters: scores on the sample's scenes, decisions from stored scores, bad inputs, the command."
import os, subprocess, sys
from pathlib import Path
import pytest
from talkface.core import Layout, Manifest, TMP_TAG, run_stage
from talkface.media import ffpath, probe, real_sample, run_ffmpeg
from talkface.sample import demo_sample, load_truth
import talkface.filters as F
from talkface.cli import main as talkface
from talkface.filters import FilterConfig, decide, filter_clip, measure
from talkface.scenes import scenes_clip

TALKFACE = str(Path(sys.executable).parent / 'talkface')
REAL = real_sample()


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    lay = Layout(tmp_path_factory.mktemp('filters'))
    return [Path(o) for o in scenes_clip(demo_sample(), lay).outputs]


@pytest.fixture(scope='module')
def scores(scenes):
    return [measure(s) for s in scenes]


def test_scores_of_the_sample_scenes(scenes, scores):
    truth = load_truth(demo_sample())
    c = truth['cut_frame']
    for s, sc in zip(scores, scenes):
        assert s['has_video'] and s['has_audio'] and s['faces_max'] == 1 and s['face_ratio'] == 1.0
        assert s['face_size'] > 250 and s['blur'] > FilterConfig().min_blur and s['size_kb'] > 10
        assert abs(s['duration'] - probe(sc).video_duration) < 1e-3
        assert s['hand_ratio'] is None or 0 <= s['hand_ratio'] <= 1
        assert decide(s) == (True, '')
    assert abs(scores[0]['speech_ratio'] - truth['voiced'][:c].mean()) < 0.15
    assert 0.1 < scores[1]['speech_ratio'] < 0.7


@pytest.mark.skipif(REAL is None, reason='the real HDTF clip is not available')
def test_scores_of_the_real_clip():
    s = measure(REAL)
    assert s['speech_ratio'] > 0.9 and s['faces_max'] == 1 and s['face_ratio'] == 1 and 250 < s['face_size'] < 350
    assert decide(s)[0]


def test_hands_score_is_absent_with_a_reason_without_mediapipe(scores, monkeypatch):
    import importlib.util
    if importlib.util.find_spec('mediapipe') is None:
        assert all(s['hand_ratio'] is None and 'mediapipe' in s['hands_reason'] for s in scores)
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: object() if name == 'mediapipe' else None)
    lm, why = F.hands_backend(FilterConfig(hands_model='/nowhere/hand_landmarker.task'))
    assert lm is None and '/nowhere/hand_landmarker.task: is missing' in why


def test_decisions_name_every_broken_rule(scores):
    s = scores[0]
    keep, why = decide({**s, 'duration': 1.2, 'size_kb': 3, 'blur': 5.0})
    assert not keep and why == 'too short: duration 1.20 s < 2 s; too small: 3.0 KB < 10 KB; blurry: Laplacian variance 5.0 < 20'
    assert decide({**s, 'face_ratio': 0.0})[1] == 'no face in any sampled frame'
    assert decide({**s, 'face_size': 40.0})[1] == 'face too small: 40 px < 64 px'
    assert decide({**s, 'faces_max': 3}, FilterConfig(max_faces=1))[1] == '3 faces in one frame (> 1)'
    assert decide({**s, 'faces_max': 3})[0]                                  # any number by default: crop takes the largest
    assert decide({**s, 'has_audio': False})[1] == 'no audio stream (the dataset needs speech)'
    assert decide(s, FilterConfig(min_duration=0, min_size=0, min_face_ratio=0, min_face_size=0, min_blur=0, min_speech_ratio=0))[0]


def test_kept_clips_are_copied_and_new_thresholds_reuse_stored_scores(scenes, tmp_path, monkeypatch):
    inp, out = tmp_path / 'in', tmp_path / 'out'
    inp.mkdir()
    for s in scenes: os.link(s, inp / s.name)
    args = ['filter', '--before_filtering_dir', str(inp), '--after_filtering_dir', str(out), '--min_duration', '2', '--min_size', '10']
    assert talkface(args) == 0
    assert sorted(p.name for p in out.glob('*.mp4')) == sorted(s.name for s in scenes)
    assert not any((out / s.name).samefile(s) for s in scenes)             # copies, never the input's own inode
    assert all((out / s.name).read_bytes() == s.read_bytes() for s in scenes)
    monkeypatch.setattr(F, 'measure', lambda *a, **k: (_ for _ in ()).throw(AssertionError('scores recomputed')))
    assert talkface(args[:-4] + ['--min_duration', '4']) == 2                 # the done clips were decided with 2 s: a changed threshold stops
    assert len(list(out.glob('*.mp4'))) == 2
    assert talkface(args[:-4] + ['--min_duration', '4', '--overwrite']) == 0  # 3 s scene 2 is now too short
    assert [p.name for p in out.glob('*.mp4')] == [scenes[0].name]
    m = Manifest(out)
    r = m.get(scenes[1].stem, 'filter')
    assert r.status == 'skipped' and r.figures['scores_reused'] and 'too short: duration 3.00 s < 4 s' in r.reason
    assert r.figures['speech_ratio'] > 0 and r.figures['kept'] is False
    m.close()
    monkeypatch.undo()
    assert talkface(args + ['--overwrite', '--rescore']) == 0                  # measure again on request
    assert len(list(out.glob('*.mp4'))) == 2


def test_a_kept_clip_is_a_copy_editing_it_leaves_the_input_alone(scenes, tmp_path):
    lay = Layout(tmp_path)
    src = tmp_path / 'input.mp4'
    src.write_bytes(scenes[0].read_bytes())
    r = filter_clip(scenes[0].stem, lay, src=src)
    assert r.ok and r.figures['how'] in ('reflink', 'copy') and not Path(r.outputs[0]).samefile(src)
    with open(r.outputs[0], 'r+b') as f: f.write(b'edited in place')
    assert src.read_bytes() == scenes[0].read_bytes()


def test_bad_clips_get_reasons_and_the_batch_goes_on(scenes, tmp_path):
    inp = tmp_path / 'in'; inp.mkdir()
    s1 = scenes[0]
    os.link(s1, inp / 'good ünï.mp4')
    run_ffmpeg(['-i', ffpath(s1), '-an', '-c', 'copy', ffpath(inp / 'mute.mp4')], s1)
    run_ffmpeg(['-i', ffpath(s1), '-frames:v', '1', '-t', '0.04', '-c:v', 'libx264', '-c:a', 'aac', ffpath(inp / 'one frame.mp4')], s1)
    run_ffmpeg(['-f', 'lavfi', '-i', 'testsrc2=s=640x360:d=3', '-i', ffpath(s1), '-map', '0:v', '-map', '1:a', '-shortest',
                '-c:v', 'libx264', '-c:a', 'aac', ffpath(inp / '-faceless.mov')], s1)
    run_ffmpeg(['-i', ffpath(s1), '-filter_complex', '[0:v]scale=640:360,split[a][b];[b]scale=256:144,hflip[s];[a][s]overlay=W-w-8:H-h-8',
                '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', ffpath(inp / 'two faces.mkv')], s1)
    (inp / 'zero.mp4').touch()
    out = tmp_path / 'out'
    r = subprocess.run([TALKFACE, 'filter', '--before_filtering_dir', str(inp), '--after_filtering_dir', str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                                      # zero.mp4 failed; the others went on
    m = Manifest(out)
    want = {'mute': ('skipped', 'no audio stream'), 'one frame': ('skipped', 'too short: duration'),
            '-faceless': ('skipped', 'no face in any sampled frame'), 'zero': ('failed', 'file is empty'),
            'good ünï': ('ok', ''), 'two faces': ('ok', '')}
    for clip, (status, why) in want.items():
        row = m.get(clip, 'filter')
        assert row.status == status and why in row.reason, (clip, row.status, row.reason)
    assert m.get('two faces', 'filter').figures['faces_max'] == 2
    assert sorted(p.name for p in out.iterdir() if p.suffix in ('.mp4', '.mkv', '.mov')) == ['good ünï.mp4', 'two faces.mkv']
    assert [p for p in out.rglob('*') if TMP_TAG in p.name] == []
    m.close()
