"""Pose in 3DDFA_V2's frame: synthetic rotations projected as 3DDFA projects, the signs, 3DDFA's angle formulas, the
ground-truth sample's roll, the real clip, the stage and the CLI."""
import subprocess, sys
from pathlib import Path
import cv2, numpy as np, pytest
from talkface.core import Layout
from talkface.faces import bfm_keypoints
from talkface.landmarks import save_landmarks
from talkface.media import probe, real_sample
from talkface.pose import (camera_pose, head_pose, matrix2angle, pose_clip, rotation_from_angles, split_camera, PoseConfig)

TALKFACE = str(Path(sys.executable).parent / 'talkface')


def project(ypr, box=(100, 60, 400, 360), size=120, s=0.62, t=(60, 55, 0)):
    "3DDFA's landmarks of its mean face at `ypr`: P = [s R | t] into a `size` px crop, then similar_transform into `box`."
    v = np.c_[bfm_keypoints(), np.ones(68)] @ np.c_[s * rotation_from_angles(*ypr), t].T
    x, y = v[:, 0] - 1, size - v[:, 1]
    return np.c_[x * (box[2] - box[0]) / size + box[0], y * (box[3] - box[1]) / size + box[1]]


@pytest.mark.parametrize('ypr', [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 18, 0), (0, -18, 0), (0, 0, 20), (0, 0, -20),
                                 (30, -15, 10), (-40, 20, -30), (10, 25, 35), (60, 10, -5)])
def test_synthetic_rotation_recovered_within_half_a_degree(ypr):
    clean = project(ypr)
    noisy = clean + np.random.default_rng(1).normal(0, 0.5, clean.shape)
    got = head_pose(np.stack([clean, noisy]))
    assert np.abs(got[0] - ypr).max() < 1e-3 and np.abs(got[1] - ypr).max() < 0.5


def test_sign_convention():
    f = project((0, 0, 0))
    yaw, pitch, roll = project((20, 0, 0)), project((0, 20, 0)), project((0, 0, 20))
    assert yaw[30, 0] < f[30, 0] - 5                   # yaw > 0: the nose tip moves to the image's left
    assert pitch[30, 1] > f[30, 1] + 5                 # pitch > 0: the nose tip moves down
    eye = lambda p: p[42:48].mean(0) - p[36:42].mean(0)
    assert eye(roll)[1] < eye(f)[1] - 20               # roll > 0: the eye line rises to the right (counter-clockwise)
    got = head_pose(np.stack([yaw, pitch, roll]))
    assert got[0, 0] > 19 and got[1, 1] > 19 and got[2, 2] > 19


def test_3ddfa_angle_formulas():
    "x = asin(R[2,0]), y = atan2(R[2,1]/cos x, R[2,2]/cos x), z = atan2(R[1,0]/cos x, R[0,0]/cos x), as (yaw, pitch, roll)."
    R = rotation_from_angles(-35, 20, -25)
    x = np.arcsin(R[2, 0])
    want = np.degrees([x, np.arctan2(R[2, 1] / np.cos(x), R[2, 2] / np.cos(x)), np.arctan2(R[1, 0] / np.cos(x), R[0, 0] / np.cos(x))])
    assert np.allclose(np.degrees(matrix2angle(R)), want) and np.allclose(want, (-35, 20, -25))
    P = np.c_[np.diag([0.5, 0.7, 1.0]) @ R, [3, 4, 5]]                  # rows of unequal scale: normalised one by one
    s, R2, t = split_camera(P)
    assert np.isclose(s, 0.6) and np.allclose(R2[:2], R[:2]) and np.allclose(camera_pose(P), (-35, 20, -25))
    for a in [(0, 0, 89), (0, 0, -89), (0, 89, 0)]:
        assert np.allclose(np.degrees(matrix2angle(rotation_from_angles(*a))), a, atol=1e-6)


def test_no_wrap_around():
    truth = np.c_[np.linspace(-45, 45, 91), np.linspace(20, -20, 91), np.linspace(-60, 60, 91)]
    got = head_pose(np.stack([project(a) for a in truth]))
    assert np.abs(got - truth).max() < 1e-3 and np.abs(np.diff(got, axis=0)).max() < 3


def test_ground_truth_sample_roll():
    from talkface.sample import demo_sample, load_truth
    from talkface.landmarks import track_landmarks, tracker_frames
    s = demo_sample(); t = load_truth(s); cut = t['cut_frame']
    tr = track_landmarks(tracker_frames(s))
    pose = head_pose(tr.pts)
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
    "With landmark files given, pose comes from them (here: 3DDFA's mean face projected at known angles), not from new fits."
    lay = Layout(tmp_path)
    rolled_photo_clip(lay.path('frames', 'c'), [0, 0, 0])
    truth = [(10, 5, -3), (0, 0, 0), (-20, 10, 15)]
    pts = np.stack([project(a) for a in truth]).astype(np.float32)
    save_landmarks(lay.dir('landmarks'), 'c', ['000001.png', '000002.png', '000003.png'], pts, np.ones(3, bool), {})
    res = pose_clip('c', lay, PoseConfig(visualize=False))
    assert res.figures['landmarks_reused']
    assert np.abs(np.load(lay.path('pose_data', 'c', '.npy')) - truth).max() < 0.01


def test_real_clip_in_3ddfa_frame():
    "The real HDTF presenter looks about straight into the camera: yaw and roll near 0, pitch a few degrees positive."
    src = real_sample()
    if src is None: pytest.skip('the real HDTF sample clip is not here (set TALKFACE_REAL_SAMPLE)')
    from talkface.landmarks import track_landmarks, tracker_frames
    pose = head_pose(track_landmarks(tracker_frames(src)).pts)
    assert not np.isnan(pose).any()
    m = pose.mean(0)
    assert abs(m[0]) < 5 and abs(m[2]) < 5 and 2 < m[1] < 12
    assert 5 < np.ptp(pose[:, 0]) < 30                 # the presenter turns a little


def test_cli(tmp_path):
    fr = tmp_path / 'frames'
    rolled_photo_clip(fr / 'a', [0, 3, 6])
    (fr / 'empty').mkdir()
    out = tmp_path / 'pose'
    r = subprocess.run([TALKFACE, 'pose', '--video_frames_dir', str(fr), '--visualization_dir', str(out / 'vis'),
                        '--pose_data_dir', str(out / 'data'), '--fps', '25'], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                             # clip 'empty' failed
    assert '1 ok' in r.stdout and '1 failed' in r.stdout and 'empty: pose: failed:' in r.stdout and 'holds no images' in r.stdout, r.stdout
    assert np.load(out / 'data/a.npy').shape == (3, 3) and (out / 'vis/a.mp4').exists()
    assert not (out / 'data/empty.npy').exists()
