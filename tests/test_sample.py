"talkface.sample: the `talkface sample` command, the truth JSON, the cached demo copy and the bad-input corpus."
import json, os, subprocess, sys, threading, time
from pathlib import Path
import numpy as np
import pytest
from talkface import sample as S
from talkface.core import BadInput, discover
from talkface.media import iter_frames, load_audio, probe

TALKFACE = str(Path(sys.executable).parent / 'talkface')
STAGES = ('none', 'scenes', 'filter', 'crop', 'convert', 'landmarks', 'pose', 'aus', 'audio')


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "Run `talkface sample --output D --bad D/bad` once for the module, as a user would."
    d = tmp_path_factory.mktemp('sample')
    env = {**os.environ, 'TALKFACE_CACHE': str(d / 'cache')}
    t0 = time.perf_counter()
    r = subprocess.run([TALKFACE, 'sample', '--output', str(d), '--bad', str(d / 'bad')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return d, r, time.perf_counter() - t0


@pytest.fixture(scope='module')
def truth(made):
    return S.load_truth(made[0] / 'talkface_sample.mp4')


def test_cli_writes_sample_and_corpus(made):
    d, r, secs = made
    assert (d / 'talkface_sample.mp4').stat().st_size > 100_000 and (d / 'talkface_sample.json').exists()
    assert 'Traceback' not in r.stderr and 'sample:' in r.stdout and '| Input |' in r.stdout
    assert not (d / 'cache').exists()          # the corpus was cut from the sample just written, not from the cache
    assert secs < 60, secs


def test_cli_help():
    r = subprocess.run([TALKFACE, 'sample', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--bad' in r.stdout and '--output' in r.stdout


def test_truth_matches_probe(made, truth):
    p = probe(made[0] / 'talkface_sample.mp4')
    assert (p.n_frames, p.width, p.height) == (truth['n_frames'], truth['width'], truth['height']) == (240, 1280, 720)
    assert abs(p.fps - 30000 / 1001) < 1e-6 and (truth['fps_num'], truth['fps_den']) == (30000, 1001)
    assert (p.video_codec, p.pix_fmt, p.audio_codec, p.sample_rate, p.channels) == ('h264', 'yuv420p', 'aac', 44100, 2)
    assert abs(p.video_duration - truth['duration']) < 1e-3 and abs(p.audio_duration - truth['duration']) < 0.05


def test_truth_is_consistent(truth):
    n, cut = truth['n_frames'], truth['cut_frame']
    for k in S.PER_FRAME: assert len(truth[k]) == n, k
    assert [list(s) for s in truth['shots']] == [[0, cut], [cut, n]]
    assert (truth['shot'][:cut] == 0).all() and (truth['shot'][cut:] == 1).all()
    assert (truth['roll'][cut:] == 0).all() and (truth['eye_closed'][cut:] == 0).all()
    assert (truth['eye_closed'][truth['blink_frames']] == 1).all() and len(truth['blink_frames']) >= 9
    assert 0.5 <= truth['voiced_fraction'] <= 0.8 and abs(truth['voiced'].mean() - truth['voiced_fraction']) < 0.05
    assert truth['mouth_open'].min() == 0 and truth['mouth_open'].max() <= 1 and (truth['mouth_open'][truth['voiced'] == 0] == 0).all()
    assert truth['landmarks_photo'].shape == (68, 2) and truth['affine'].shape == (n, 2, 3)
    # the documented roll convention: landmarks moved by the affine have an eye line at `roll` degrees, counter-clockwise positive
    for i in range(0, n, 7):
        lm = S.transform_points(truth['affine'][i], truth['landmarks_photo'])
        assert abs(S.eye_roll(lm) - truth['roll'][i]) < 0.05, i
        c = truth['face_box'][i]; assert c[0] < lm[30, 0] < c[2] and c[1] < lm[30, 1] < c[3]   # nose tip inside the box


def test_truth_is_deterministic(made):
    "The JSON written by the command is exactly what this process computes for the same seed; another seed differs."
    text = (made[0] / 'talkface_sample.json').read_text('utf-8')
    assert text == S._dumps(S.sample_truth(8.0, 0))
    assert S.sample_truth(8.0, 1)['roll'] != json.loads(text)['roll']


def test_demo_sample_cache_and_race(tmp_path, monkeypatch):
    "Two processes racing on an empty cache both get a valid copy; an outdated copy is rebuilt."
    calls = []
    def fake_make(out_dir, seconds=8.0, seed=0):
        calls.append(out_dir); time.sleep(0.3)
        (Path(out_dir) / 'talkface_sample.mp4').write_bytes(b'x' * 100)
        (Path(out_dir) / 'talkface_sample.json').write_text(json.dumps({'version': S.SAMPLE_VERSION}))
        return Path(out_dir) / 'talkface_sample.mp4'
    monkeypatch.setattr(S, 'make_sample', fake_make)
    monkeypatch.setenv('TALKFACE_CACHE', str(tmp_path))
    out = []
    ts = [threading.Thread(target=lambda: out.append(S.demo_sample())) for _ in range(3)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert len(out) == 3 and len(set(out)) == 1 and out[0] == tmp_path / 'sample' / 'talkface_sample.mp4'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sample']          # no temporary folder left behind
    n = len(calls); S.demo_sample(); assert len(calls) == n                   # cached: nothing regenerated
    (tmp_path / 'sample' / 'talkface_sample.json').write_text(json.dumps({'version': S.SAMPLE_VERSION - 1}))
    S.demo_sample(); assert len(calls) == n + 1                               # outdated: rebuilt
    assert json.loads((tmp_path / 'sample' / 'talkface_sample.json').read_text())['version'] == S.SAMPLE_VERSION


# ---- the bad-input corpus ----

@pytest.fixture(scope='module')
def bad(made):
    return made[0] / 'bad'


@pytest.fixture(scope='module')
def expect(bad):
    return S.load_expectations(bad)


def test_every_corpus_file_has_its_expectation(bad, expect):
    names = [n for n, *_ in S.BAD_INPUTS]
    assert list(expect) == names and len(names) >= 28
    for n in names:
        assert (bad / n).exists() and (bad / f'{n}.expect.json').exists(), n
        e = expect[n]['expect']
        assert e['status'] in ('ok', 'skipped', 'failed') and e['stage'] in STAGES, n
        assert (e['status'] == 'ok') == (e['stage'] == 'none') == (e['reason_contains'] == ''), n
        assert expect[n]['kind'] and expect[n]['description']
    assert {Path(p).name for p in discover(bad).values()} == set(names)     # every file is a clip the pipeline will see
    assert {'.mov', '.mkv', '.webm', '.avi'} <= {Path(n).suffix for n in names}
    assert any(n.startswith('-') for n in names) and any(' ' in n for n in names) and any('"' in n for n in names)
    assert any(not n.isascii() for n in names)


@pytest.mark.parametrize('name', ['zero_bytes.mp4', 'truncated.mp4', 'not_a_video.mp4'])
def test_unreadable_files_fail_probe_naming_the_file(bad, expect, name):
    with pytest.raises(BadInput) as e: probe(bad / name)
    assert name in str(e.value) and expect[name]['expect']['reason_contains'] in e.value.reason
    if name != 'truncated.mp4':   # a truncated file still starts with decodable frames: probe is what catches it
        with pytest.raises(BadInput) as e: next(iter_frames(bad / name))
        assert name in str(e.value)


def test_audio_only_has_no_video(bad):
    p = probe(bad / 'audio_only.mp4')
    assert not p.has_video and p.has_audio
    with pytest.raises(BadInput, match='no video stream') as e: next(iter_frames(bad / 'audio_only.mp4'))
    assert 'audio_only.mp4' in str(e.value)
    assert len(load_audio(bad / 'audio_only.mp4')) > 16000


def test_bad_files_are_bad_in_the_stated_way(bad):
    P = lambda n: probe(bad / n)
    assert P('no_audio.mp4').has_video and not P('no_audio.mp4').has_audio
    assert P('one_frame.mp4').n_frames == 1 and P('short_0.4s.mp4').duration < 0.5
    assert abs(P('fps60.mp4').fps - 60) < 0.01 and P('fps60.mp4').duration >= 2
    assert '10' in P('ten_bit.mp4').pix_fmt and P('yuv444.mp4').pix_fmt.startswith('yuv444')
    assert (P('odd_641x479.mp4').width, P('odd_641x479.mp4').height) == (641, 479)
    pr = P('portrait_9x16.mp4'); assert pr.height > pr.width and abs(pr.width / pr.height - 9 / 16) < 0.01
    hu = P('huge_3840x2160.mp4'); assert (hu.width, hu.height) == (3840, 2160) and 2 <= hu.duration < 3
    assert (P('audio_8khz.mp4').sample_rate, P('audio_6ch.mp4').channels) == (8000, 6)
    assert np.abs(load_audio(bad / 'silent_audio.mp4')).max() < 1e-3
    assert np.abs(load_audio(bad / 'container.mov')).max() > 0.1            # the good ones do talk
    for n in ('container.mov', 'container.mkv', 'container.webm', 'container.avi', '-leading-dash.mp4', 'quote\'s "double".mp4',
              'name with spaces.mp4', 'ñandú_日本語_clip.mp4'):
        p = P(n); assert p.has_video and p.has_audio and p.duration >= 2 and p.size_bytes >= 10_000, n
    assert P('container.webm').video_codec == 'vp9' and P('container.avi').video_codec == 'mpeg4'


def test_vfr_has_variable_frame_durations(bad):
    import av
    with av.open(str(bad / 'vfr.mp4')) as c:
        v = c.streams.video[0]
        pts = sorted(float(p.pts * v.time_base) for p in c.demux(v) if p.pts is not None)
    d = np.diff(pts)
    assert d.min() < 0.025 and d.max() > 0.04


def test_faces_in_the_corpus(bad):
    from talkface.faces import get_detector, largest
    det = get_detector()
    faces = lambda n, step=30: [det.detect(f) for f in iter_frames(bad / n, step=step)]
    assert all(len(b) == 0 for b in faces('no_face.mp4'))
    assert all(len(b) == 2 for b in faces('two_faces.mp4'))
    tiny = [largest(b) for b in faces('tiny_face.mp4')]
    assert all(b is not None and b[2] - b[0] < 60 for b in tiny)
    leaves = faces('face_leaves_frame.mp4', 74)
    assert len(leaves[0]) == 1 and len(leaves[-1]) == 0


def test_bad_inputs_table(bad, expect):
    t = S.bad_inputs_table(bad)
    lines = t.splitlines()
    assert lines[0].startswith('| Input |') and len(lines) == 2 + len(expect)
    assert '| zero-byte .mp4 | fails it at `scenes` |' in t and 'skips it at `filter`' in t and 'processes it fully' in t
