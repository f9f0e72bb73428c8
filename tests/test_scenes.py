"Scenes: cuts on the ground-truth sample, exact splits, skip-existing, bad inputs, the command."
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from talkface.core import BadInput, Layout, Manifest, TalkfaceError, TMP_TAG, run_stage
from talkface.media import ffpath, iter_frames, probe, real_sample, rotation, run_ffmpeg
from talkface.media import frames as media_frames
from talkface.sample import demo_sample, load_truth
import talkface.scenes as S
from talkface.scenes import ScenesConfig, detect_cuts, scenes_clip

TALKFACE = str(Path(sys.executable).parent / 'talkface')
REAL = real_sample()
needs_real = pytest.mark.skipif(REAL is None, reason='the real HDTF clip is not available (../shared/samples/)')


@pytest.fixture(scope='module')
def sample(): return demo_sample()


@pytest.fixture(scope='module')
def truth(sample): return load_truth(sample)


@pytest.fixture(scope='module')
def split(sample, tmp_path_factory):
    lay = Layout(tmp_path_factory.mktemp('scenes'))
    return lay, scenes_clip(sample, lay, ScenesConfig())


def leftovers(root: Path) -> list:
    return [p for p in Path(root).rglob('*') if TMP_TAG in p.name]


def test_cut_within_one_frame_of_truth(sample, truth):
    for det in ('content', 'adaptive'):
        c = detect_cuts(sample, ScenesConfig(detector=det))
        assert len(c.cuts) == 1 and abs(c.cuts[0] - truth['cut_frame']) <= 1, (det, c.cuts)
        assert c.n_frames == truth['n_frames']
        assert abs(c.cut_times[0] - truth['cut_frame'] / truth['fps']) < 1.5 / truth['fps']


def test_sample_gives_two_25fps_clips_split_at_the_cut(sample, truth, split):
    lay, res = split
    assert res.status == 'ok' and res.figures['n_scenes'] == 2 and res.figures['how'] == 'split'
    assert res.figures['cuts'] == [truth['cut_frame']] or abs(res.figures['cuts'][0] - truth['cut_frame']) <= 1
    outs = [Path(o) for o in res.outputs]
    assert [o.name for o in outs] == [f'{sample.stem}-Scene-001.mp4', f'{sample.stem}-Scene-002.mp4']
    c, n, fps = truth['cut_frame'], truth['n_frames'], truth['fps']
    for o, frames in zip(outs, (c, n - c)):
        p = probe(o)
        assert p.fps == 25.0 and p.has_audio and p.video_codec == 'h264' and p.pix_fmt == 'yuv420p'
        assert abs(p.n_frames - frames / fps * 25) <= 1
        assert abs(p.audio_duration * 25 - p.n_frames) <= 1
    # scene 1's last frame is shot 1, scene 2's first frame is shot 2
    src = {f.index: f.image.astype(int) for f in media_frames(sample, size=160) if f.index in (c - 1, c)}
    def d(img, ref):
        import cv2
        return np.abs(cv2.resize(img, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA).astype(int) - ref).mean()
    last1, first2 = S.read_last(outs[0]), next(iter_frames(outs[1]))
    assert d(last1, src[c - 1]) < d(last1, src[c]) / 3 and d(first2, src[c]) < d(first2, src[c - 1]) / 3
    rec = json.loads(S.record_path(lay, sample.stem).read_text())
    assert rec['ranges'] == [[0, res.figures['cuts'][0]], [res.figures['cuts'][0], n]] and rec['outputs'] == [o.name for o in outs]


def test_one_scene_per_ffmpeg_process_gives_the_same_clips(sample, split, tmp_path):
    "group=1 adds each scene's audio in an ffmpeg call of its own, which seeks into the file: the scenes must not change."
    _, res = split
    res1 = scenes_clip(sample, Layout(tmp_path), ScenesConfig(group=1))
    for a, b in zip(res.outputs, res1.outputs):
        pa, pb = probe(a), probe(b)
        assert pa.n_frames == pb.n_frames and abs(pa.audio_duration - pb.audio_duration) < 0.03
        fa, fb = next(iter_frames(a)), next(iter_frames(b))
        assert np.abs(fa.astype(int) - fb).mean() < 2


def test_rerun_skips_redo_replaces_and_removes_stale_scenes(sample, tmp_path, monkeypatch):
    "The driver skips a video whose row is ok and whose scenes and record are complete; a redo replaces the scenes."
    from talkface.core import STAGES, is_done
    lay = Layout(tmp_path)
    r1 = scenes_clip(sample, lay)
    assert r1.figures['n_scenes'] == 2
    assert is_done(r1, STAGES['scenes'].expects(sample.stem, lay, ScenesConfig()))
    rec = S.record_path(lay, sample.stem)
    kept = rec.read_bytes()
    rec.unlink()
    assert not is_done(r1, STAGES['scenes'].expects(sample.stem, lay, ScenesConfig()))   # no record: split again
    rec.write_bytes(kept)
    r3 = scenes_clip(sample, lay, ScenesConfig(threshold=200))   # no cut at 200: one scene, copied whole
    assert r3.figures['n_scenes'] == 1 and r3.figures['how'] in ('reflink', 'copy')
    assert sorted(p.name for p in lay.dir('scenes').iterdir()) == [f'{sample.stem}-Scene-001.mp4', f'{sample.stem}.scenes.json']
    assert Path(r3.outputs[0]).read_bytes() == sample.read_bytes() and not Path(r3.outputs[0]).samefile(sample)


def test_a_failed_split_leaves_nothing(sample, tmp_path, monkeypatch):
    def boom(args, src, **kw):
        for a in args:
            if str(a).startswith('file:') and TMP_TAG in str(a): Path(str(a)[5:]).write_bytes(b'half a video')
        raise TalkfaceError(src, 'ffmpeg failed: disk full')
    monkeypatch.setattr(S, 'run_ffmpeg', boom)
    r = run_stage(scenes_clip, sample, Layout(tmp_path))
    assert r.status == 'failed' and 'disk full' in r.reason
    assert [p for p in tmp_path.rglob('*') if p.is_file()] == []


@needs_real
def test_real_clip_is_one_scene_copied_whole(tmp_path):
    assert detect_cuts(REAL).cuts == []
    r = scenes_clip(REAL, Layout(tmp_path))
    assert r.figures['n_scenes'] == 1 and r.figures['how'] in ('reflink', 'copy') and not Path(r.outputs[0]).samefile(REAL)
    assert Path(r.outputs[0]).name == f'{REAL.stem}-Scene-001.mp4' and Path(r.outputs[0]).read_bytes() == REAL.read_bytes()


def test_other_containers_and_odd_sizes_are_reencoded_upright_mp4(sample, tmp_path):
    src = tmp_path / 'in'; src.mkdir()
    run_ffmpeg(['-ss', '6', '-i', ffpath(sample), '-vf', 'scale=641:479', '-c:v', 'libx264', '-preset', 'ultrafast',
                '-pix_fmt', 'yuv444p', '-c:a', 'aac', ffpath(src / 'odd size.mkv')], sample)
    r = scenes_clip(src / 'odd size.mkv', Layout(tmp_path / 'o'))
    assert r.status == 'ok' and r.figures['how'] == 'split' and Path(r.outputs[0]).name == 'odd size-Scene-001.mp4'
    p = probe(r.outputs[0])
    assert (p.width, p.height, p.fps, p.pix_fmt) == (640, 478, 25.0, 'yuv420p') and p.has_audio


def test_rotated_phone_video_is_reencoded_upright(sample, tmp_path):
    flat = tmp_path / 'flat.mp4'
    run_ffmpeg(['-ss', '6', '-i', ffpath(sample), '-vf', 'scale=320:180', '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac',
                ffpath(flat)], sample)
    rot = tmp_path / 'phone.mp4'
    with pytest.MonkeyPatch.context() as mp:   # -display_rotation came in ffmpeg 6.1: the test input is made with the pinned one
        mp.delenv('TALKFACE_FFMPEG', raising=False)
        run_ffmpeg(['-display_rotation', '90', '-i', ffpath(flat), '-c', 'copy', ffpath(rot)], flat)
    assert rotation(rot) != 0
    r = scenes_clip(rot, Layout(tmp_path / 'o'))
    assert r.figures['how'] == 'split'
    p = probe(r.outputs[0])
    assert (p.width, p.height) == (180, 320) and rotation(r.outputs[0]) == 0
    f = next(media_frames(rot, size=320)).image
    assert f.shape[:2] == (320, 180)                               # media.frames turns it upright too


def test_bad_inputs_fail_with_a_reason_and_the_batch_goes_on(sample, tmp_path):
    inp = tmp_path / 'in'; inp.mkdir()
    good = inp / '-ünï code clip.mp4'
    run_ffmpeg(['-ss', '3', '-t', '4', '-i', ffpath(sample), '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', ffpath(good)], sample)
    (inp / 'zero.mp4').touch()
    (inp / 'text.mp4').write_text('<html>403</html>\n' * 50)
    data = good.read_bytes(); (inp / 'truncated.mp4').write_bytes(data[:len(data) // 3])
    run_ffmpeg(['-i', ffpath(good), '-vn', '-c:a', 'copy', ffpath(inp / 'audio only.mp4')], good)
    run_ffmpeg(['-i', ffpath(good), '-c:v', 'libvpx-vp9', '-deadline', 'realtime', '-cpu-used', '8', '-c:a', 'libopus',
                ffpath(inp / 'web.webm')], good)
    r = subprocess.run([TALKFACE, 'scenes', '--from_directory', str(inp), '--output_directory', str(tmp_path / 'out')],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                             # some videos failed: the exit status says so
    m = Manifest(tmp_path / 'out')
    want = {'zero': 'file is empty', 'text': 'not a readable media file', 'truncated': 'truncated', 'audio only': 'no video stream'}
    for clip, why in want.items():
        row = m.get(clip, 'scenes')
        assert row.status == 'failed' and why in row.reason and clip in row.reason, (clip, row.reason)
    for clip in ('-ünï code clip', 'web'):
        assert m.get(clip, 'scenes').status == 'ok', m.get(clip, 'scenes').reason
    names = sorted(p.name for p in (tmp_path / 'out').glob('*.mp4'))
    assert names[0].startswith('-ünï code clip-Scene-') and 'web-Scene-001.mp4' in names
    assert not any(n.startswith(('zero', 'text', 'truncated', 'audio only')) for n in names)
    assert leftovers(tmp_path / 'out') == []
    assert '4 failed' in r.stdout and 'file is empty' in r.stdout, r.stdout
    m.close()


@pytest.mark.parametrize('container', ['ts', 'mp4'])
def test_streams_that_start_late_are_cut_at_the_same_frames(sample, truth, tmp_path, container):
    "An MPEG-TS starts its clock at 1.4 s or more, and its remux to .mp4 starts the video a little after the audio."
    ts = tmp_path / 'late.ts'
    run_ffmpeg(['-i', ffpath(sample), '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', '-f', 'mpegts',
                '-output_ts_offset', '1.4', ffpath(ts)], sample)
    src = ts
    if container == 'mp4':
        src = tmp_path / 'late.mp4'
        run_ffmpeg(['-i', ffpath(ts), '-c', 'copy', ffpath(src)], ts)
    assert probe(src).video_start > 0.01
    r = scenes_clip(src, Layout(tmp_path / 'o'))
    c, n, fps = truth['cut_frame'], truth['n_frames'], truth['fps']
    assert r.figures['cuts'] == [c]
    outs = [Path(o) for o in r.outputs]
    for o, frames in zip(outs, (c, n - c)):
        p = probe(o)
        assert abs(p.n_frames - frames / fps * 25) <= 0.5 and abs(p.audio_duration * 25 - p.n_frames) <= 1
    shots = {f.index: f.image.astype(int) for f in media_frames(sample, size=160) if f.index in (c - 1, c)}
    def d(img, ref):
        import cv2
        return np.abs(cv2.resize(img, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA).astype(int) - ref).mean()
    last1, first2 = S.read_last(outs[0]), next(iter_frames(outs[1]))
    assert d(last1, shots[c - 1]) < d(last1, shots[c]) / 3 and d(first2, shots[c]) < d(first2, shots[c - 1]) / 3
