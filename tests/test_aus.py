"AUs: geometry on synthetic landmarks (motions and one deformation per AU) and the sample, the table and sidecars, the OpenFace CSV normaliser, binary and errors."
import json, os, stat, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from talkface.core import Layout, TalkfaceError, run_stage
from talkface.landmarks import save_landmarks
from talkface.aus import (AUsConfig, META, aus_clip, blinks, find_openface, geometry_table, normalize_openface,
                          read_openface_csv, template, AUS, NOT_MEASURED, OPENFACE_R, OPENFACE_C)

TALKFACE = str(Path(sys.executable).parent / 'talkface')


def synthetic_clip(n=60, seed=0):
    "Mean-face landmarks in a 512 px frame, with jitter, a jaw drop on frames 10-19, and a blink on frames 30-33."
    rng = np.random.default_rng(seed)
    base = template() * 2 + [256, 256]
    pts = np.repeat(base[None], n, 0) + rng.normal(0, 0.3, (n, 68, 2))
    for i in range(10, min(20, n)):
        pts[i, 57:60, 1] += 30; pts[i, 65:68, 1] += 30; pts[i, 5:12, 1] += 30; pts[i, 55:57, 1] += 25    # lower lip and jaw drop
    for i in range(30, min(34, n)):
        for a, b in ((37, 41), (38, 40), (43, 47), (44, 46)):
            mid = (pts[i, a, 1] + pts[i, b, 1]) / 2
            pts[i, a, 1] = pts[i, b, 1] = mid                                                          # lids meet
    return pts.astype(np.float32)


def test_geometry_table_on_synthetic_motion():
    df, rec = geometry_table(synthetic_clip(), fps=25)
    assert list(df.columns[:5]) == list(META) and len(df) == 60
    assert df['timestamp'].iloc[25] == 1.0 and df['frame'].iloc[0] == 1
    jaw = df.index.isin(range(10, 20))
    assert df['AU26_r'][jaw].min() > 3 and df['AU26_r'][~jaw].max() < 1 and df['AU25_r'][jaw].min() > 3
    assert len(rec['blinks']) == 1 and 30 <= rec['blinks'][0]['peak_frame'] - 1 <= 33
    assert df['AU45_c'].iloc[31] == 1 and df['AU45_c'].iloc[5] == 0
    assert ((df.filter(like='_r') >= 0) & (df.filter(like='_r') <= 5)).all().all()


DEFORM = {  # mm, y down; frames 20-29 of a still face
    'AU05': {37: (0, -2), 38: (0, -2), 43: (0, -2), 44: (0, -2)},
    'AU07': {40: (0, -2), 41: (0, -2), 46: (0, -2), 47: (0, -2)},
    'AU10': {k: (0, -3) for k in (49, 50, 51, 52, 53, 61, 62, 63)},
    'AU15': {48: (0, 3), 54: (0, 3), 60: (0, 2), 64: (0, 2)},
    'AU20': {48: (-3, 0), 54: (3, 0), 60: (-2, 0), 64: (2, 0)},
    'AU23': {50: (0, 1.5), 51: (0, 2), 52: (0, 1.5), 56: (0, -1.5), 57: (0, -2), 58: (0, -1.5)},
}


@pytest.mark.parametrize('au', list(DEFORM))
def test_each_new_au_follows_its_deformation(au):
    rng = np.random.default_rng(3)
    pts = np.repeat((template() * 2 + [256, 256])[None], 60, 0) + rng.normal(0, 0.3, (60, 68, 2))
    for k, v in DEFORM[au].items(): pts[20:30, k] += np.multiply(v, 2)
    df, _ = geometry_table(pts)
    on, near = np.isin(np.arange(60), range(20, 30)), np.isin(np.arange(60), range(18, 32))
    assert df[f'{au}_r'][on].mean() > 2 and df[f'{au}_r'][~near].max() < 1
    others = [k for k in DEFORM if k != au and not (au, k) in {('AU23', 'AU15')}]
    assert all(df[f'{k}_r'][on].mean() < 0.5 for k in others), {k: df[f'{k}_r'][on].mean() for k in others}


def test_blink_is_not_lid_tightening():
    df, _ = geometry_table(synthetic_clip(), fps=25)
    assert df['AU45_r'].iloc[31] > 2 and df['AU07_r'].iloc[30:34].max() == 0


def test_only_measurable_aus_in_the_table():
    df, rec = geometry_table(synthetic_clip(), fps=25)
    cols = [c[:-2] for c in df.columns if c.endswith('_r')]
    assert cols == list(AUS) and set(AUS) | set(NOT_MEASURED) == set(OPENFACE_R) | set(OPENFACE_C)
    assert not set(NOT_MEASURED) & set(cols) and set(rec['not_measured']) == {'AU06', 'AU09', 'AU14', 'AU17', 'AU28'}
    assert all(rec['measured'][k]['facs'] and rec['measured'][k]['geometry'] for k in AUS)


def test_padded_and_missing_frames_read_as_untracked():
    pts = synthetic_clip(20)
    pts[5] = np.nan
    valid = np.ones(20, bool); valid[7] = False
    df, _ = geometry_table(pts, valid)
    assert df['success'].tolist()[4:9] == [1, 0, 1, 0, 1] and (df.loc[[5, 7], 'AU25_r'] == 0).all()


def test_blink_hysteresis():
    assert blinks([0, 0.1, 0.3, 0.2, 0.05, 0, 0.25, 0]) == [(1, 3, 2), (6, 6, 6)]
    assert blinks([np.nan, 0.5, np.nan]) == [(1, 1, 1)]


def test_sample_mouth_and_blinks():
    from talkface.sample import demo_sample, load_truth
    from talkface.landmarks import track_landmarks, tracker_frames
    s = demo_sample(); t = load_truth(s); cut = t['cut_frame']
    tr = track_landmarks(tracker_frames(s))
    df, rec = geometry_table(tr.pts[:cut], tr.valid[:cut], fps=t['fps'])
    for k in ('AU25_r', 'AU26_r'): assert np.corrcoef(df[k], t['mouth_open'][:cut])[0, 1] >= 0.8
    truth = np.split(t['blink_frames'], np.flatnonzero(np.diff(t['blink_frames']) > 1) + 1)
    peaks = [b['peak_frame'] - 1 for b in rec['blinks']]
    assert len(peaks) >= len(truth) - 1                 # the sample's encoding depends on the cores: one weak blink may be missed
    assert all(any(b[0] - 2 <= p <= b[-1] + 2 for b in truth) for p in peaks)   # and no false blink


OPENFACE_CSV = """frame, face_id, timestamp, confidence, success, AU01_r, AU02_r, AU45_r, AU01_c, AU02_c, AU28_c, AU45_c
1, 0, 0.000, 0.98, 1, 0.31, 0.10, 0.00, 0, 0, 0, 0
2, 0, 0.040, 0.97, 1, 0.25, 0.00, 1.80, 0, 0, 0, 1
3, 0, 0.080, 0.10, 0, 0.00, 0.00, 0.00, 0, 0, 0, 0
3, 1, 0.080, 0.02, 0, 2.00, 0.00, 0.00, 1, 0, 0, 0
5, 0, 0.160, 0.95, 1, 0.10, 0.00, 2.40, 0, 0, 0, 1
"""


def test_openface_csv_normaliser():
    raw = read_openface_csv(OPENFACE_CSV)
    assert 'AU45_r' in raw.columns and ' AU45_r' not in raw.columns       # the comma + space separator is handled
    df = normalize_openface(raw, fps=25, n_frames=6)
    assert df['frame'].tolist() == [1, 2, 3, 4, 5, 6]
    assert list(df.columns) == list(META) + ['AU01_r', 'AU02_r', 'AU45_r', 'AU01_c', 'AU02_c', 'AU28_c', 'AU45_c']
    assert df['AU01_r'].tolist() == [0.31, 0.25, 0.0, 0.0, 0.10, 0.0]          # frame 3: the more confident face
    assert df['success'].tolist() == [1, 1, 0, 0, 1, 0] and df['timestamp'].tolist()[:3] == [0.0, 0.04, 0.08]
    # FaceLandmarkImg: one row per image, a `face` column and no frame/timestamp
    img = read_openface_csv('face, confidence, AU45_r, AU45_c\n0, 0.9, 3.1, 1\n')
    d2 = normalize_openface(img, fps=25)
    assert d2.loc[0, 'AU45_r'] == 3.1 and d2.loc[0, 'success'] == 1
    with pytest.raises(Exception, match='no AU columns'): normalize_openface(read_openface_csv('frame, confidence\n1, 0.9\n'))


def frames_clip(lay, clip='c', n=6):
    import cv2
    from talkface.faces import grace_hopper
    d = lay.path('frames', clip); d.mkdir(parents=True)
    for i in range(n): cv2.imwrite(str(d / f'{i + 1:06d}.png'), grace_hopper())
    return d


def test_stage_outputs_and_sidecar(tmp_path):
    lay = Layout(tmp_path)
    frames_clip(lay)
    res = aus_clip('c', lay, AUsConfig())
    d = lay.path('aus', 'c')
    assert res.status == 'ok' and sorted(p.name for p in d.iterdir()) == ['c.blinks.csv', 'c.csv', 'c.json']
    side = json.loads((d / 'c.json').read_text())
    assert side['estimator'] == 'geometry' and side['fps'] == 25.0 and 'baselines' in side and side['blinks'] == []
    assert 'AU06' in side['not_measured'] and 'AU06_r' not in pd.read_csv(d / 'c.csv').columns and 'AU15' in side['measured']
    df = pd.read_csv(d / 'c.csv')
    assert len(df) == 6 and df['success'].all() and list(pd.read_csv(d / 'c.blinks.csv').columns)[:2] == ['start_frame', 'end_frame']


def test_stage_reuses_landmark_file(tmp_path):
    lay = Layout(tmp_path)
    frames_clip(lay, n=60)
    save_landmarks(lay.dir('landmarks'), 'c', [f'{i + 1:06d}.png' for i in range(60)], synthetic_clip(), np.ones(60, bool), {})
    aus_clip('c', lay, AUsConfig())
    side = json.loads((lay.path('aus', 'c') / 'c.json').read_text())
    assert side['landmarks']['reused'] and len(side['blinks']) == 1       # the synthetic blink, not the static photo


def test_openface_missing_binary_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(TalkfaceError) as e: find_openface('/no/such/FeatureExtraction')
    assert 'OpenFace is not installed' in str(e.value) and '--openface_bin' in str(e.value) and 'geometry' in str(e.value)
    lay = Layout(tmp_path / 'o'); frames_clip(lay)
    res = run_stage(aus_clip, 'c', lay, AUsConfig(backend='openface', openface_bin='/no/such'))
    assert res.status == 'failed' and 'OpenFace is not installed' in res.reason and not lay.path('aus', 'c').exists()
    r = subprocess.run([TALKFACE, 'aus', '--from_dir_path', str(lay.dir('frames')), '--to_dir_path', str(tmp_path / 'au'),
                        '--backend', 'openface', '--openface_bin', '/no/such'], capture_output=True, text=True,
                       env={**os.environ, 'PATH': str(tmp_path)})
    assert r.returncode == 2 and 'OpenFace is not installed' in r.stderr   # said once, before any clip: a usage error


@pytest.mark.skipif(os.name != 'posix', reason='a shell script stands in for OpenFace')
def test_openface_backend_with_a_stand_in_binary(tmp_path):
    exe = tmp_path / 'bin' / 'FeatureExtraction'; exe.parent.mkdir()
    body = OPENFACE_CSV.replace('\n', '\\n')
    exe.write_text('#!/bin/sh\n# args: -fdir DIR -out_dir OUT -aus\nname=$(basename "$2")\nprintf "' + body + '" > "$4/$name.csv"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    lay = Layout(tmp_path / 'o'); frames_clip(lay, n=6)
    res = aus_clip('c', lay, AUsConfig(backend='openface', openface_bin=str(exe)))
    assert res.status == 'ok' and res.figures['estimator'] == 'openface'
    d = lay.path('aus', 'c')
    df = pd.read_csv(d / 'c.csv'); side = json.loads((d / 'c.json').read_text())
    assert len(df) == 6 and df['AU45_r'].tolist()[:5] == [0.0, 1.8, 0.0, 0.0, 2.4]
    assert side['estimator'] == 'openface' and side['openface_bin'] == str(exe)
    assert [(b['start_frame'], b['end_frame']) for b in side['blinks']] == [(2, 2), (5, 5)]


def test_cli_geometry(tmp_path):
    lay = Layout(tmp_path / 'data')
    frames_clip(lay, 'a', 4)
    (lay.dir('frames') / 'b').mkdir()
    out = tmp_path / 'data/specified_formats/videos/facial_action_units'
    r = subprocess.run([TALKFACE, 'aus', '--from_dir_path', str(lay.dir('frames')), '--to_dir_path', str(out)], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr                             # clip b (no images) failed
    assert '1 ok' in r.stdout and '1 failed' in r.stdout and (out / 'a/a.csv').exists() and not (out / 'b').exists()
