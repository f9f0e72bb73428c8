"Pose: the sign convention on synthetic rotations, no wrap-around, the ground-truth sample's roll, the stage and the CLI."
import subprocess, sys
from pathlib import Path
import cv2, numpy as np, pytest
from talkface.core import Layout
from talkface.landmarks import save_landmarks
from talkface.pose import (MEAN_FACE, camera_matrix, euler_from_rotation, head_pose, pose_clip, rotation_from_euler, PoseConfig)
from talkface.media import probe

TALKFACE = str(Path(sys.executable).parent / 'talkface')


def project(ypr, K, t=(0, 0, 350)):
    P = MEAN_FACE @ rotation_from_euler(*ypr).T + t
    return (P[:, :2] / P[:, 2:]) * [K[0, 0], K[1, 1]] + K[:2, 2]


@pytest.mark.parametrize('ypr', [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 18, 0), (0, -18, 0), (0, 0, 20), (0, 0, -20),
                                 (30, -15, 10), (-40, 20, -30), (10, 25, 35)])
def test_synthetic_rotation_recovered_within_1_degree(ypr):
    K = camera_matrix(512, 512)
    clean = project(ypr, K)
    noisy = clean + np.random.default_rng(1).normal(0, 0.5, clean.shape)
    got = head_pose(np.stack([clean, noisy]), 512, 512)
    assert np.abs(got[0] - ypr).max() < 1e-3 and np.abs(got[1] - ypr).max() < 1


def test_sign_convention():
    K = camera_matrix(512, 512)
    f = project((0, 0, 0), K)
    right = project((20, 0, 0), K); up = project((0, 20, 0), K); ccw = project((0, 0, 20), K)
    assert right[30, 0] > f[30, 0]                     # yaw > 0: the nose tip moves to the image's right
    assert up[30, 1] < f[30, 1]                        # pitch > 0: the nose tip moves up
    eye = lambda p: p[42:48].mean(0) - p[36:42].mean(0)
    assert eye(ccw)[1] < eye(f)[1] - 20             # roll > 0: the eye line rises to the right (counter-clockwise)


def test_no_wrap_around():
    # a head rolling through 0 while turning: angles stay continuous and roll never reaches +-180
    K = camera_matrix(640, 480)
    truth = np.c_[np.linspace(-45, 45, 91), np.linspace(20, -20, 91), np.linspace(-60, 60, 91)]
    got = head_pose(np.stack([project(a, K) for a in truth]), 640, 480)
    assert np.abs(got - truth).max() < 1e-3 and np.abs(np.diff(got, axis=0)).max() < 3
    for a in [(0, 0, 89), (0, 0, -89), (0, 89, 0), (89, 0, 0)]:
        assert np.allclose(euler_from_rotation(rotation_from_euler(*a)), a, atol=1e-6)


def test_ground_truth_sample_roll():
    from talkface.sample import demo_sample, load_truth
    from talkface.landmarks import track_landmarks, tracker_frames
    s = demo_sample(); t = load_truth(s); cut = t['cut_frame']
    tr = track_landmarks(tracker_frames(s))
    pose = head_pose(tr.pts, t['width'], t['height'])
    assert np.abs(pose[:cut, 2] - t['roll'][:cut]).mean() < 2
    assert np.corrcoef(pose[:cut, 2], t['roll'][:cut])[0, 1] > 0.9


def rolled_photo_clip(d: Path, rolls):
    from talkface.faces import grace_hopper
    img = grace_hopper()
    c = (img.shape[1] / 2, img.shape[0] / 2)
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rolls):
        cv2.imwrite(str(d / f'{i + 1:06d}.png'), cv2.warpAffine(img, cv2.getRotationMatrix2D(c, r, 1.0), (img.shape[1], img.shape[0]),
                                                                borderMode=cv2.BORDER_REFLECT))
    return d


def test_stage_recovers_applied_roll(tmp_path):
    lay = Layout(tmp_path)
    rolls = [0, 5, 10, -5, -10, 0]
    rolled_photo_clip(lay.path('frames', 'c'), rolls)
    res = pose_clip('c', lay, PoseConfig())
    assert res.status == 'ok' and res.figures['with_pose'] == 6
    P = np.load(lay.path('pose_data', 'c', '.npy'))
    assert P.shape == (6, 3) and P.dtype == np.float32
    assert np.abs((P[:, 2] - P[0, 2]) - rolls).max() < 2       # the applied roll, relative to the photo's own
    assert probe(lay.path('pose_vis', 'c', '.mp4')).n_frames == 6


def test_reuses_given_landmarks(tmp_path):
    "With landmark files given, pose comes from them (here: a projected mean face at known angles), not from new fits."
    lay = Layout(tmp_path)
    rolled_photo_clip(lay.path('frames', 'c'), [0, 0, 0])
    K = camera_matrix(*cv2.imread(str(lay.path('frames', 'c') / '000001.png')).shape[1::-1])
    truth = [(10, 5, -3), (0, 0, 0), (-20, 10, 15)]
    pts = np.stack([project(a, K) for a in truth]).astype(np.float32)
    save_landmarks(lay.dir('landmarks'), 'c', ['000001.png', '000002.png', '000003.png'], pts, np.ones(3, bool), {})
    res = pose_clip('c', lay, PoseConfig(visualize=False))
    assert res.figures['landmarks_reused']
    assert np.abs(np.load(lay.path('pose_data', 'c', '.npy')) - truth).max() < 0.01


def test_cli(tmp_path):
    fr = tmp_path / 'frames'
    rolled_photo_clip(fr / 'a', [0, 3, 6])
    (fr / 'empty').mkdir()
    out = tmp_path / 'pose'
    r = subprocess.run([TALKFACE, 'pose', '--video_frames_dir', str(fr), '--visualization_dir', str(out / 'vis'),
                        '--pose_data_dir', str(out / 'data'), '--fps', '25'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'ok 1' in r.stdout and 'failed 1' in r.stdout and 'empty: failed:' in r.stdout and 'holds no images' in r.stdout
    assert np.load(out / 'data/a.npy').shape == (3, 3) and (out / 'vis/a.mp4').exists()
    assert not (out / 'data/empty.npy').exists()
