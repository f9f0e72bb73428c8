"Identity: one speaker for the sample's two shots, another for the HDTF presenter; an identity change inside a clip is flagged."
import json, shutil
from pathlib import Path
import numpy as np, pytest
from talkface.core import Layout, Manifest, MissingWeights, BadInput, TalkfaceError
from talkface.identity import (IdentityConfig, SAME_PERSON, assign_speakers, identity_clip, identity_path, identity_root,
                               model_path, read_pairs)
from talkface.media import real_sample, run_ffmpeg, ffpath
from talkface.pipeline import RunConfig, apply_settings, run_pipeline
from talkface.sample import demo_sample

S1, S2, H = 'talkface_sample-Scene-001', 'talkface_sample-Scene-002', 'hdtf_FAzSK8PLmGI-Scene-001'


def speakers(root) -> dict:
    m = Manifest(root)
    try: return {r['clip']: r['figures'].get('speaker') for r in m.rows('identity')}
    finally: m.close()


def test_sample_shots_are_one_speaker_and_the_hdtf_presenter_another(handoff_root):
    _, root = handoff_root
    spk = speakers(root)
    assert spk[S1] == spk[S2] and spk[S1]
    for c in (S1, S2):
        rec = json.loads(identity_path(Layout(root), c, '.json').read_text())
        assert rec['speaker'] == spk[c] and rec['speaker_source'] == 'cluster' and not rec['identity_change']
        assert np.load(identity_path(Layout(root), c, '.npy')).shape == (128,)
    if real_sample() is None: pytest.skip('the real HDTF sample is not here')
    assert spk[H] != spk[S1]
    e = {c: np.load(identity_path(Layout(root), c, '.npy')) for c in (S1, S2, H)}
    assert np.linalg.norm(e[S1] - e[S2]) < SAME_PERSON < np.linalg.norm(e[S1] - e[H])


def test_a_speakers_csv_overrides_the_clustering(handoff_root, tmp_path):
    root = tmp_path / 'root'
    shutil.copytree(handoff_root[1], root)
    (tmp_path / 'spk.csv').write_text(f'clip,speaker\n{S1},grace\n')
    out = assign_speakers(root, tmp_path / 'spk.csv')
    assert out[S1] == ('grace', 'user') and out[S2] == ('grace', 'cluster+user')   # the same cluster takes the name
    assert speakers(root)[S2] == 'grace'
    assert json.loads(identity_path(Layout(root), S2, '.json').read_text())['speaker'] == 'grace'
    (tmp_path / 'bad.csv').write_text(f'{S1}\n')
    with pytest.raises(BadInput, match='line 1'): read_pairs(tmp_path / 'bad.csv')


def test_without_landmarks_the_face_is_aligned_by_the_detector(handoff_root, tmp_path):
    root = tmp_path / 'root'
    shutil.copytree(handoff_root[1], root)
    for p in Layout(root).dir('landmarks').glob(f'{S2}.*'): p.unlink()
    r = identity_clip(S2, Layout(root), IdentityConfig(overwrite=True))
    assert r.ok and r.figures['aligned_with'] == 'detector'
    e1 = np.load(identity_path(Layout(handoff_root[1]), S2, '.npy'))
    assert np.linalg.norm(np.load(identity_path(Layout(root), S2, '.npy')) - e1) < 0.2


def test_missing_model_and_not_a_root_are_clear_errors(tmp_path):
    with pytest.raises(MissingWeights, match='nope.dat'): model_path('nope.dat')
    with pytest.raises(TalkfaceError, match='no manifest.sqlite'): identity_root(tmp_path)


def test_an_identity_change_inside_a_clip_is_flagged(tmp_path):
    "The sample's two shots joined without a detected cut (one person: not flagged) and the sample followed by the HDTF presenter."
    real = real_sample()
    inp = tmp_path / 'in'; inp.mkdir()
    shutil.copy(demo_sample(), inp / 'uncut.mp4')
    if real:
        run_ffmpeg(['-t', '5', '-i', ffpath(demo_sample()), '-i', ffpath(real), '-filter_complex',
                    '[0:v]fps=30000/1001,setsar=1[v0];[1:v]fps=30000/1001,setsar=1[v1];[0:a]aresample=44100,aformat=channel_layouts=stereo[a0];'
                    '[1:a]aresample=44100,aformat=channel_layouts=stereo[a1];[v0][a0][v1][a1]concat=n=2:v=1:a=1[v][a]',
                    '-map', '[v]', '-map', '[a]', '-c:v', 'libx264', '-preset', 'veryfast', '-c:a', 'aac', ffpath(inp / 'joined.mp4')], 'joined')
    run = apply_settings(RunConfig(input=str(inp), output=str(tmp_path / 'root'), stages='scenes,filter,crop,convert,landmarks', workers=2),
                         {'scenes': {'threshold': 1000}})
    run_pipeline(run).close()
    res = identity_root(tmp_path / 'root')
    assert res['uncut-Scene-001'].ok and not res['uncut-Scene-001'].figures['identity_change']   # one person: no identity change
    if real is None: pytest.skip('the real HDTF sample is not here')
    j = res['joined-Scene-001']
    assert j.ok and j.figures['identity_change'] and abs(j.figures['change_frame'] - 125) <= 12
    m = Manifest(tmp_path / 'root')
    row = m.get('joined-Scene-001', 'identity')
    m.close()
    assert 'identity changes inside the clip' in row.reason and row.figures['identity_change']
    r = identity_clip('joined-Scene-001', Layout(tmp_path / 'root'), IdentityConfig(change_action='drop', overwrite=True))
    assert r.status == 'skipped' and 'identity changes' in r.reason
    assert not identity_path(Layout(tmp_path / 'root'), 'joined-Scene-001', '.json').exists()
