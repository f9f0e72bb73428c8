"Crop: the fixed square on the sample (truth face in every frame), the HDTF clip, padding, drift, bad inputs, the seed command."
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from talkface.core import Layout, Manifest, TMP_TAG, run_stage
from talkface.media import ffpath, iter_frames, probe, real_sample, run_ffmpeg
from talkface.sample import demo_sample, load_truth
from talkface.scenes import scenes_clip
from talkface.crop import CropConfig, crop_clip, find_crop_box, square_box

TALKFACE = str(Path(sys.executable).parent / 'talkface')
REAL = real_sample()


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    return [Path(o) for o in scenes_clip(demo_sample(), Layout(tmp_path_factory.mktemp('crop'))).outputs]


def truth_boxes(truth, k: int, n_out: int) -> np.ndarray:
    "Truth face boxes of scene k at the scene's 25 fps frame times."
    c, n, fps = truth['cut_frame'], truth['n_frames'], truth['fps']
    start, end = (0, c) if k == 0 else (c, n)
    idx = np.minimum(start + np.floor(np.arange(n_out) / 25 * fps + 1e-6).astype(int), end - 1)
    return truth['face_box'][idx]


def inside(x, y, side, boxes) -> bool:
    b = np.asarray(boxes)
    return bool(np.all((b[:, 0] >= x) & (b[:, 1] >= y) & (b[:, 2] <= x + side) & (b[:, 3] <= y + side)))


def test_sample_crops_are_even_squares_holding_the_truth_face_in_every_frame(scenes, tmp_path):
    truth = load_truth(demo_sample())
    lay = Layout(tmp_path); lay.dir('raw').mkdir(parents=True)
    for k, s in enumerate(scenes):
        os.link(s, lay.path('raw', s.stem, '.mp4'))
        r = crop_clip(s.stem, lay)
        assert r.ok and r.figures['faces_max'] == 1 and not r.figures['drifting']
        box = json.loads(lay.path('cropped', s.stem, '.json').read_text())
        x, y, side = box['x'], box['y'], box['side']
        assert side % 2 == 0 and x % 2 == 0 and y % 2 == 0 and box['pad'] is None
        assert 0 <= x and x + side <= 1280 and 0 <= y and y + side <= 720
        n_out = probe(s).n_frames
        assert inside(x, y, side, truth_boxes(truth, k, n_out)), k
        # side = max(median w, median h) x 1.6, rounded to even
        b = np.array(box['boxes']); w, h = np.median(b[:, 2] - b[:, 0]), np.median(b[:, 3] - b[:, 1])
        assert abs(side - max(w, h) * 1.6) <= 2
        p = probe(lay.path('cropped', s.stem, '.mp4'))
        assert (p.width, p.height, p.n_frames, p.has_audio) == (side, side, n_out, True)
        f_src, f_out = next(iter_frames(s)), next(iter_frames(lay.path('cropped', s.stem, '.mp4')))
        assert np.abs(f_src[y:y + side, x:x + side].astype(int) - f_out).mean() < 3


@pytest.mark.skipif(REAL is None, reason='the real HDTF clip is not available')
def test_real_clip_crop_contains_the_whole_face():
    box = find_crop_box(REAL, CropConfig(skip_per_frame=5))
    assert box.faces_max == 1 and box.drift < 0.1 and len(box.boxes) == 30
    x, y, s = box.x, box.y, box.side
    # every detected face box on every 5th frame, widened by 10% on each side, lies inside the square
    b = np.array(box.boxes); w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    wide = np.stack([b[:, 0] - .1 * w, b[:, 1] - .1 * h, b[:, 2] + .1 * w, b[:, 3] + .1 * h], 1)
    assert inside(x, y, s, wide)


def test_square_geometry():
    assert square_box([[540, 260, 740, 460]], 1280, 720).filter == 'crop=320:320:480:200'
    assert square_box([[1200, 0, 1280, 80]], 1280, 720).filter == 'crop=128:128:1152:0'      # shifted inside, top right
    big = square_box([[0, 0, 640, 360]], 640, 360, expanded_ratio=1.0)                       # 1280 px square on a 640x360 frame
    assert big.side == 1280 and big.pad == [1280, 1280, 320, 460]
    assert big.filter == 'pad=1280:1280:320:460:black,crop=1280:1280:0:0'
    odd = square_box([[300, 200, 341, 279]], 641, 479)
    assert odd.side % 2 == 0 and odd.x % 2 == 0 and odd.y % 2 == 0


def test_a_square_larger_than_the_frame_is_padded_black_around_the_frame(scenes, tmp_path):
    s = scenes[1]                                            # face ~440 px tall; x 2.7 -> 1188 px > 720 px frame height
    lay = Layout(tmp_path); lay.dir('raw').mkdir(parents=True); os.link(s, lay.path('raw', 'close', '.mp4'))
    r = crop_clip('close', lay, CropConfig(expanded_ratio=1.7))
    box = json.loads(lay.path('cropped', 'close', '.json').read_text())
    side, pad = box['side'], box['pad']
    assert r.ok and side > 720 and pad is not None and pad[1] == side and box['y'] < 0
    f = next(iter_frames(lay.path('cropped', 'close', '.mp4')))
    assert f.shape[:2] == (side, side)
    top, bottom = -box['y'], -box['y'] + 720                 # the frame's rows inside the square
    assert f[:max(top - 4, 0)].mean() < 20 and f[bottom + 4:].mean() < 20 and f[top + 8:bottom - 8].mean() > 60
    src = next(iter_frames(s))
    x = box['x']
    assert np.abs(f[top + 4:bottom - 4].astype(int) - src[4:-4, x:x + side]).mean() < 4


def test_size_resizes_the_square(scenes, tmp_path):
    lay = Layout(tmp_path); lay.dir('raw').mkdir(parents=True); os.link(scenes[0], lay.path('raw', 'a', '.mp4'))
    crop_clip('a', lay, CropConfig(size=256))
    p = probe(lay.path('cropped', 'a', '.mp4'))
    assert (p.width, p.height) == (256, 256)


def test_drift_is_flagged_or_dropped(scenes, tmp_path):
    lay = Layout(tmp_path); lay.dir('raw').mkdir(parents=True); os.link(scenes[0], lay.path('raw', 'a', '.mp4'))
    r = crop_clip('a', lay, CropConfig(max_drift=0.01, encode=False))
    assert r.ok and r.figures['drifting'] and r.figures['drift'] > 0.01
    r = crop_clip('a', lay, CropConfig(max_drift=0.01, drift_action='drop'))
    assert r.status == 'skipped' and 'drifts' in r.reason and 'a.mp4' in r.reason
    assert list(lay.dir('cropped').iterdir()) == []


def test_rotated_video_box_is_in_upright_pixels(scenes, tmp_path):
    "A phone video stored sideways with rotation metadata: the box is found, and applied, in upright pixels (as ffmpeg shows it)."
    flat = tmp_path / 'flat.mp4'                                       # an upright portrait clip
    run_ffmpeg(['-i', ffpath(scenes[0]), '-t', '2', '-vf', 'crop=405:720:437:0,scale=360:640', '-c:v', 'libx264', '-preset', 'ultrafast',
                '-c:a', 'aac', ffpath(flat)], scenes[0])
    s0, side = tmp_path / 's0.mp4', tmp_path / 'side.mp4'             # the same pixels stored sideways, with rotation metadata
    run_ffmpeg(['-i', ffpath(flat), '-vf', 'transpose=1', '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'copy', ffpath(s0)], flat)
    with pytest.MonkeyPatch.context() as mp:   # -display_rotation came in ffmpeg 6.1: the test input is made with the pinned one
        mp.delenv('TALKFACE_FFMPEG', raising=False)
        run_ffmpeg(['-display_rotation', '90', '-i', ffpath(s0), '-c', 'copy', ffpath(side)], flat)
    a, b = find_crop_box(flat), find_crop_box(side)
    assert (b.width, b.height) == (360, 640)
    assert abs(a.x - b.x) <= 4 and abs(a.y - b.y) <= 4 and abs(a.side - b.side) <= 4
    lay = Layout(tmp_path / 'o'); lay.dir('raw').mkdir(parents=True)
    os.link(side, lay.path('raw', 'side', '.mp4')); os.link(flat, lay.path('raw', 'flat', '.mp4'))
    crop_clip('side', lay, CropConfig(size=256)); crop_clip('flat', lay, CropConfig(size=256))
    f, ref = next(iter_frames(lay.path('cropped', 'side', '.mp4'))), next(iter_frames(lay.path('cropped', 'flat', '.mp4')))
    assert f.shape == ref.shape == (256, 256, 3) and np.abs(f.astype(int) - ref).mean() < 8


def test_bad_clips_skip_with_reasons_and_leave_nothing(scenes, tmp_path):
    inp = tmp_path / 'in'; inp.mkdir()
    s = scenes[0]
    run_ffmpeg(['-f', 'lavfi', '-i', 'testsrc2=s=320x240:d=2', '-f', 'lavfi', '-i', 'sine=d=2', '-c:v', 'libx264', '-c:a', 'aac',
                ffpath(inp / 'no face.mp4')], s)
    run_ffmpeg(['-ss', '0.5', '-t', '2.5', '-i', ffpath(s), '-vf',
                "pad=2200:720:0:0:color=0x5a6e82,crop=w=640:h=720:x='if(lt(t,1.2),335,min(1500,335+(t-1.2)*1400))':y=0,scale=320:360",
                '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', ffpath(inp / 'leaves.mp4')], s)
    run_ffmpeg(['-i', ffpath(s), '-filter_complex', '[0:v]scale=640:360,split[a][b];[b]scale=256:144,hflip[q];[a][q]overlay=W-w-8:H-h-8',
                '-c:v', 'libx264', '-preset', 'ultrafast', '-c:a', 'aac', ffpath(inp / 'two faces.mp4')], s)
    run_ffmpeg(['-i', ffpath(s), '-t', '2', '-vf', 'scale=641:479', '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv444p',
                '-c:a', 'aac', ffpath(inp / 'odd.mkv')], s)
    run_ffmpeg(['-i', ffpath(s), '-t', '2', '-vf', 'crop=405:720:437:0,scale=360:640', '-c:v', 'libx264', '-preset', 'ultrafast',
                '-c:a', 'aac', ffpath(inp / 'portrait.mov')], s)
    (inp / 'zero.mp4').touch()
    out = tmp_path / 'out'
    r = subprocess.run([TALKFACE, 'crop', '--from_dir_prefix', str(inp), '--output_dir_prefix', str(out), '--expanded_ratio', '0.6'],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                                  # zero.mp4 failed: the command says so
    m = Manifest(out)
    want = {'no face': ('skipped', 'no face found in any of the'), 'leaves': ('skipped', 'leaves the frame'),
            'zero': ('failed', 'file is empty'), 'two faces': ('ok', ''), 'odd': ('ok', ''), 'portrait': ('ok', '')}
    for clip, (status, why) in want.items():
        row = m.get(clip, 'crop')
        assert row.status == status and why in row.reason, (clip, row.status, row.reason)
    assert m.get('two faces', 'crop').figures['faces_max'] == 2 and 'largest' in m.get('two faces', 'crop').figures['note']
    tf = json.loads((out / 'two faces.json').read_text())
    assert tf['x'] < 320                                              # the big face on the left, not the small copy at the bottom right
    for clip in ('two faces', 'odd', 'portrait'):
        p = probe(out / f'{clip}.mp4'); assert p.width == p.height and p.width % 2 == 0, clip
    assert sorted(p.name for p in out.iterdir() if p.suffix in ('.mp4', '.json')) == \
        ['odd.json', 'odd.mp4', 'portrait.json', 'portrait.mp4', 'two faces.json', 'two faces.mp4']
    assert [p for p in out.rglob('*') if TMP_TAG in p.name] == []
    m.close()


def test_seed_command_crops_a_folder_like_the_original(scenes, tmp_path):
    raw = tmp_path / 'raw_data'; raw.mkdir()
    os.link(scenes[1], raw / 'FAzSK8PLmGI.mp4')
    out = tmp_path / 'cropped_faces'
    r = subprocess.run([TALKFACE, 'crop', '--from_dir_prefix', f'{raw}/', '--output_dir_prefix', f'{out}/', '--expanded_ratio', '0.6',
                        '--skip_per_frame', '25'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    p = probe(out / 'FAzSK8PLmGI.mp4')
    assert p.width == p.height and p.has_audio and abs(p.fps - probe(scenes[1]).fps) < 1e-6
    before = Manifest(out).rows('crop')[0]['updated']
    r2 = subprocess.run([TALKFACE, 'crop', '--from_dir_prefix', str(raw), '--output_dir_prefix', str(out)], capture_output=True, text=True)
    assert r2.returncode == 0 and '1 ok (1 done before)' in r2.stdout, r2.stdout      # skipped: already done
    assert Manifest(out).rows('crop')[0]['updated'] == before
