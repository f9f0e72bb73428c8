"Sync: the sign pinned with delayed wavs, shifts on the sample and the real clip, the filter, correction, bad input, SyncNet's path."
import json, shutil
from pathlib import Path
import numpy as np, pytest
from talkface.core import Layout, Manifest, MissingWeights, run_stage
from talkface.landmarks import load_landmarks, save_landmarks
from talkface.media import load_audio, probe, real_sample, run_ffmpeg, save_wav
from talkface.pipeline import RunConfig, run_pipeline
from talkface.sample import demo_sample
from talkface.cli import main as talkface
from talkface.sync import (SPF, SYNCNET_FILE, LandmarksScorer, SyncConfig, SyncNetScorer, file_digest, get_scorer, judge,
                           make_random_syncnet, naive_offset, shift_audio, shift_mp4_command, sync_clip, sync_json, syncnet_v2)

SHIFTS = (-8, -4, -2, 0, 2, 4, 8)


def prepare(video, dest: Path) -> tuple[Layout, str]:
    "scenes..landmarks on one video; the layout and its first clip."
    (dest / 'in').mkdir(parents=True)
    shutil.copy2(video, dest / 'in' / Path(video).name)
    run_pipeline(RunConfig(input=str(dest / 'in'), output=str(dest / 'out'), stages='scenes,filter,crop,convert,landmarks', workers=1))
    lay = Layout(dest / 'out')
    return lay, sorted(p.stem for p in lay.dir('audios_16k').glob('*.wav'))[0]


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    return prepare(demo_sample(), tmp_path_factory.mktemp('sync-sample'))


@pytest.fixture(scope='module')
def real(tmp_path_factory):
    if real_sample() is None: pytest.skip('the real HDTF clip is not here (set TALKFACE_REAL_SAMPLE)')
    return prepare(real_sample(), tmp_path_factory.mktemp('sync-real'))


def inputs(lay: Layout, clip: str):
    _, pts, valid = load_landmarks(lay.dir('landmarks'), clip)
    return np.where(valid[:, None, None], pts, np.nan), load_audio(lay.path('audios_16k', clip, '.wav'))


def copy_clip(lay: Layout, clip: str, dest: Path, audio=None, shift: int = 0) -> Layout:
    "A layout with `clip`'s landmarks, frames, mp4 (audio moved by `shift`) and wav (`audio`, else the clip's moved by `shift`)."
    new = Layout(dest)
    shutil.copytree(lay.dir('landmarks'), new.dir('landmarks'))
    new.dir('videos_25fps').mkdir(parents=True)
    i = probe(lay.path('videos_25fps', clip, '.mp4'))
    run_ffmpeg(shift_mp4_command(lay.path('videos_25fps', clip, '.mp4'), new.path('videos_25fps', clip, '.mp4'), shift,
                                 i.sample_rate, i.audio_duration), dest)
    x = load_audio(lay.path('audios_16k', clip, '.wav')) if audio is None else audio
    save_wav(new.path('audios_16k', clip, '.wav'), shift_audio(x, shift) if audio is None else x)
    return new


def test_sign_is_pinned_by_a_delayed_wav(sample, tmp_path):
    "3 frames of silence in front of the wav: the audio is late, offset +3; 3 frames cut from its start: -3."
    lay, clip = sample
    for k in (3, -3):
        r = sync_clip(clip, copy_clip(lay, clip, tmp_path / str(k), shift=k))
        assert r.status == 'ok' and r.figures['offset'] == k
        rec = json.loads(sync_json(Layout(tmp_path / str(k)), clip).read_text())
        assert rec['offset'] == k and 'late' in rec['convention'] and len(rec['scores']) == len(rec['lags']) == 31


def test_sample_shifts_exact_and_mismatched_audio_below(sample):
    lay, clip = sample
    pts, wav = inputs(lay, clip)
    sc = LandmarksScorer()
    synced = {k: sc.score(pts, shift_audio(wav, k)) for k in SHIFTS}
    assert all(r.offset == k for k, r in synced.items()), {k: r.offset for k, r in synced.items()}
    assert min(r.confidence for r in synced.values()) > 5
    other = {'reversed': wav[::-1].copy(), 'rotated 2 s': np.roll(wav, 50 * SPF)}
    if real_sample() is not None: other['real clip'] = np.resize(load_audio(real_sample()), len(wav))
    for name, x in other.items():
        r = sc.score(pts, x)
        assert r.confidence < min(s.confidence for s in synced.values()), name
        assert not judge(r.offset, r.confidence, SyncConfig())[0], name          # flagged by the default thresholds


def test_real_clip_offset_and_shifts(real, capsys):
    pts, wav = inputs(*real)
    sc = LandmarksScorer()
    ours = {k: sc.score(pts, shift_audio(wav, k)) for k in (0, -3, 3, -6, 6)}
    naive = {k: naive_offset(pts, shift_audio(wav, k))[0] for k in ours}
    with capsys.disabled(): print('\nreal clip: shift -> ours / naive:', {k: (r.offset, naive[k]) for k, r in ours.items()})
    assert abs(ours[0].offset) <= 1
    assert all(abs(ours[k].offset - k) <= 1 for k in (-3, 3, -6, 6))
    for x in (wav[::-1].copy(), np.roll(wav, 50 * SPF), np.resize(load_audio(demo_sample()), len(wav))):
        assert sc.score(pts, x).confidence < ours[0].confidence


def test_no_face_in_part_of_the_clip(sample, tmp_path):
    lay, clip = sample
    new = copy_clip(lay, clip, tmp_path / 'c')
    names, pts, valid = load_landmarks(new.dir('landmarks'), clip)
    valid[30:70] = False
    save_landmarks(new.dir('landmarks'), clip, names, pts, valid, {})
    r = sync_clip(clip, new)
    assert r.status == 'ok' and r.figures['offset'] == 0 and r.figures['no_face'] == 40


def test_silence_and_short_and_missing_wavs(sample, tmp_path):
    lay, clip = sample
    x = load_audio(lay.path('audios_16k', clip, '.wav'))
    silent = copy_clip(lay, clip, tmp_path / 's', audio=np.zeros_like(x))
    r = run_stage(sync_clip, clip, silent)
    assert r.status == 'skipped' and 'silent' in r.reason and clip in r.reason
    short = copy_clip(lay, clip, tmp_path / 'short', audio=x[:80 * SPF])
    r = run_stage(sync_clip, clip, short)
    assert r.status == 'ok' and r.figures['offset'] == 0 and r.figures['no_audio'] == 45
    tiny = copy_clip(lay, clip, tmp_path / 'tiny', audio=x[:10 * SPF])
    r = run_stage(sync_clip, clip, tiny)
    assert r.status == 'skipped' and 'frames have both a face and audio' in r.reason
    tiny.path('audios_16k', clip, '.wav').unlink()
    r = run_stage(sync_clip, clip, tiny)
    assert r.status == 'failed' and f'{clip}.wav' in r.reason and 'no 16 kHz wav' in r.reason


def test_correction_is_applied_once(sample, tmp_path):
    lay, clip = sample
    new = copy_clip(lay, clip, tmp_path / 'late', shift=4)
    wav, mp4 = new.path('audios_16k', clip, '.wav'), new.path('videos_25fps', clip, '.mp4')
    n_samples, n_frames = len(load_audio(wav)), probe(mp4).n_frames
    cfg = SyncConfig(sync_correct=True)
    r = sync_clip(clip, new, cfg)
    assert (r.figures['offset'], r.figures['corrected_by'], r.figures['kept']) == (4, -4, True)
    pts, _ = inputs(new, clip)
    assert LandmarksScorer().score(pts, load_audio(wav)).offset == 0 and LandmarksScorer().score(pts, load_audio(mp4)).offset == 0
    assert len(load_audio(wav)) == n_samples and len(load_audio(wav)) % SPF == 0 and probe(mp4).n_frames == n_frames
    rec = json.loads(sync_json(new, clip).read_text())
    assert rec['correction']['shift_frames'] == -4 and rec['correction']['shift_samples'] == -4 * SPF and rec['offset_after'] == 0
    digests = file_digest(wav), file_digest(mp4)
    again = sync_clip(clip, new, cfg)                                   # a rerun: the record says it is done
    assert again.figures['reused'] and again.figures['corrected_by'] == -4 and (file_digest(wav), file_digest(mp4)) == digests
    assert sync_clip(clip, new, SyncConfig(sync_correct=True, overwrite=True)).figures['offset'] == 0   # measured again: in sync


def test_flag_drop_and_changed_thresholds(sample, tmp_path):
    lay, clip = sample
    new = copy_clip(lay, clip, tmp_path / 'rev', audio=load_audio(lay.path('audios_16k', clip, '.wav'))[::-1].copy())
    r = sync_clip(clip, new, SyncConfig(drop=True))
    assert r.status == 'skipped' and 'dropped for sync' in r.reason and sync_json(new, clip).exists()
    r = sync_clip(clip, new)                                           # flag only: kept, reason recorded, scores reused
    assert r.status == 'ok' and 'flagged for sync' in r.reason and r.figures['reused'] and not r.figures['kept']
    r = sync_clip(clip, new, SyncConfig(min_confidence=0, max_abs_offset=15))
    assert r.status == 'ok' and r.reason == '' and r.figures['kept']


def test_command_writes_records_and_manifest(sample, tmp_path):
    lay, clip = sample
    out = tmp_path / 'data' / 'specified_formats' / 'videos' / 'sync'
    assert talkface(['sync', '--videos_dir', str(lay.dir('videos_25fps')), '--audios_dir', str(lay.dir('audios_16k')),
                     '--output_dir', str(out), '--landmarks_dir', str(lay.dir('landmarks')), '--max_offset', '10']) == 0
    assert json.loads((out / f'{clip}.json').read_text())['lags'] == list(range(-10, 11))
    rows = {r['clip']: r for r in Manifest(tmp_path / 'data').rows('sync')}
    assert rows[clip]['status'] == 'ok' and rows[clip]['figures']['offset'] == 0 and rows[clip]['figures']['confidence'] > 3.5


def test_syncnet_checkpoint_names_and_missing_file(tmp_path, capsys):
    sd = syncnet_v2().state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes['netcnnaud.0.weight'] == (64, 1, 3, 3) and shapes['netcnnaud.18.weight'] == (512, 256, 5, 4)
    assert shapes['netcnnlip.4.weight'] == (256, 96, 1, 5, 5) and shapes['netfcaud.3.weight'] == (1024, 512)
    assert shapes['netfclip.1.running_mean'] == (512,)
    with pytest.raises(MissingWeights) as e: get_scorer(SyncConfig('syncnet', model_path=str(tmp_path / SYNCNET_FILE)))
    assert SYNCNET_FILE in str(e.value) and '--backend landmarks' in str(e.value)
    assert talkface(['sync', '--videos_dir', str(tmp_path), '--backend', 'syncnet', '--model_path', str(tmp_path / SYNCNET_FILE)]) == 2
    assert SYNCNET_FILE in capsys.readouterr().err


def test_syncnet_random_checkpoint_end_to_end(sample, tmp_path):
    "A random checkpoint saved in the original's format loads by name; a 20-frame clip (PNG frames) runs through the stage."
    lay, clip = sample
    ck = make_random_syncnet(tmp_path / SYNCNET_FILE, seed=1)
    new = Layout(tmp_path / 'short')
    names, pts, valid = load_landmarks(lay.dir('landmarks'), clip)
    save_landmarks(new.dir('landmarks'), clip, names[:20], pts[:20], valid[:20], {})
    new.path('frames', clip).mkdir(parents=True)
    for n in names[:20]: shutil.copy2(lay.path('frames', clip) / n, new.path('frames', clip) / n)
    save_wav(new.path('audios_16k', clip, '.wav'), load_audio(lay.path('audios_16k', clip, '.wav'))[:20 * SPF])
    r = sync_clip(clip, new, SyncConfig('syncnet', model_path=str(ck), batch_size=8, min_confidence=0, max_abs_offset=15))
    assert r.status == 'ok', r.reason
    rec = json.loads(sync_json(new, clip).read_text())
    assert rec['backend'] == 'syncnet' and rec['lags'] == list(range(-15, 16)) and rec['n_scored'] == 15
    d = -np.array(rec['scores'])
    assert rec['offset'] == rec['lags'][int(np.argmin(d))] and abs(rec['confidence'] - (np.median(d) - d.min())) < 1e-3
    assert rec['extra']['min_dist'] == pytest.approx(d.min(), abs=1e-3)
    assert get_scorer(SyncConfig('syncnet', model_path=str(ck), batch_size=8)) is get_scorer(SyncConfig('syncnet', model_path=str(ck), batch_size=8))


def test_sync_runs_in_the_pipeline_and_the_command(tmp_path):
    import subprocess, sys
    r = subprocess.run([str(Path(sys.executable).parent / 'talkface'), 'sync', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and all(f in r.stdout for f in ('--sync_correct', '--videos_dir', '--audios_dir', '--output_dir',
                                                              '--landmarks_dir', '--backend', '--model_path', '--max_offset'))
    (tmp_path / 'in').mkdir(); shutil.copy2(demo_sample(), tmp_path / 'in' / 'sample.mp4')
    m = run_pipeline(RunConfig(input=str(tmp_path / 'in'), output=str(tmp_path / 'out'), workers=1,
                               stages='scenes,filter,crop,convert,landmarks,sync'))
    rows = m.rows('sync'); m.close()
    assert len(rows) == 2 and all(r['status'] == 'ok' and r['figures']['offset'] == 0 for r in rows), rows
    lay = Layout(tmp_path / 'out')
    assert all(sync_json(lay, r['clip']).exists() and str(sync_json(lay, r['clip'])) in r['outputs'] for r in rows)
    assert lay.dir('sync') == tmp_path / 'out' / 'specified_formats' / 'videos' / 'sync'
