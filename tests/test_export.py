"Export: metadata, speaker-disjoint splits, shards that webdataset and tarfile read, atomic reruns, the card, rebuild, bad input."
import json, shutil, tarfile
from pathlib import Path
import numpy as np, pandas as pd, pytest
from talkface.core import Layout, Manifest, StageResult, TalkfaceError
from talkface import export as X
from talkface.export import ExportConfig, RELEASE, collect, export, kept_clips, clip_stages, rebuild
from talkface.media import iter_frames, real_sample

S1, S2 = 'talkface_sample-Scene-001', 'talkface_sample-Scene-002'
SPLIT = 'train=0.5,val=0.5'


@pytest.fixture(scope='module')
def exported(handoff_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('exp') / 'out'
    return export(handoff_root[1], out, ExportConfig(split=SPLIT, shard_size='2MB')), out


def test_metadata_has_one_row_per_kept_clip_with_source_times_box_and_scores(handoff_root, exported):
    _, out = exported
    meta = pd.read_parquet(out / 'metadata.parquet').set_index('clip')
    m = Manifest(handoff_root[1]); rows = m.rows(); m.close()
    assert sorted(meta.index) == kept_clips(clip_stages(rows)) and 'broken' not in ' '.join(meta.index)   # the corrupt input failed
    for col in ('speaker', 'split', 'source', 'start', 'end', 'crop_box', 'n_frames', 'duration', 'filter.blur', 'filter.speech_ratio',
                'crop.drift', 'landmarks.fitted', 'pose.yaw_mean', 'audio.speech_ratio', 'identity.spread', 'identity.identity_change'):
        assert col in meta.columns, col
    s2 = meta.loc[S2]
    assert Path(s2['source']).name == 'talkface_sample.mp4' and abs(s2['start'] - 150 * 1001 / 30000) < 1e-3
    assert abs(s2['end'] - s2['start'] - s2['n_frames'] / 25) < 1e-3 and s2['duration'] == 3.0
    assert list(s2['crop_box'])[2] - list(s2['crop_box'])[0] == s2['crop_size']


def test_splits_are_by_speaker_and_deterministic(handoff_root, exported, tmp_path):
    _, out = exported
    meta = pd.read_parquet(out / 'metadata.parquet')
    assert meta.groupby('speaker')['split'].nunique().max() == 1
    assert meta.set_index('clip')['speaker'][S1] == meta.set_index('clip')['speaker'][S2]
    df, _ = collect(handoff_root[1])
    a = X.with_splits(df, ExportConfig(split=SPLIT, seed=7))
    assert a['split'].tolist() == X.with_splits(df, ExportConfig(split=SPLIT, seed=7))['split'].tolist()
    spk = df.set_index('clip')['speaker'][S1]
    (tmp_path / 'splits.csv').write_text(f'speaker,split\n{spk},test\n')
    b = X.with_splits(df, ExportConfig(split=SPLIT, split_file=str(tmp_path / 'splits.csv'))).set_index('clip')
    assert b['split'][S1] == b['split'][S2] == 'test'


def test_shards_open_with_webdataset_and_tarfile(exported):
    summary, out = exported
    import webdataset as wds   # a requirement (settings.ini): the shards must open with it
    meta = pd.read_parquet(out / 'metadata.parquet').set_index('clip')
    shards = sorted(out.glob('*.tar'))
    assert len(shards) == summary['files'] >= 2 and all(p.name.split('-')[0] in ('train', 'val') for p in shards)
    names = {}
    for s in shards:
        with tarfile.open(s) as t: names[s.name] = [m.name for m in t]
    keys = {n.split('.')[0] for v in names.values() for n in v}
    assert keys == set(meta.index)
    got = {s['__key__']: s for s in wds.WebDataset([str(s) for s in shards], shardshuffle=False)}
    assert set(got) == set(meta.index)
    for k, s in got.items():
        assert {'mp4', 'wav', 'json', 'landmarks.npy', 'pose.npy', 'aus.csv', 'mfcc.npy', 'hubert.npy', 'identity.json'} <= set(s)
        j = json.loads(s['json'])
        assert j['split'] == meta['split'][k] and j['speaker'] == meta['speaker'][k]
        assert s['mp4'][4:8] == b'ftyp' and s['wav'][:4] == b'RIFF'
    for s in shards:   # which split a shard belongs to: every sample in it
        assert {json.loads(got[n.split('.')[0]]['json'])['split'] for n in names[s.name]} == {s.name.split('-')[0]}


def test_the_card_and_histograms(exported):
    _, out = exported
    card = (out / 'README.md').read_text()
    for s in ('## Splits', '| split | clips | hours | speakers |', 'min_blur', 'dlib-bin', '## Loading', 'duration.png'):
        assert s in card
    for p in ('duration.png', 'face_size.png', 'pose.png'):
        assert (out / p).stat().st_size < 60_000


def test_a_rerun_is_atomic(handoff_root, tmp_path, monkeypatch):
    root, out = handoff_root[1], tmp_path / 'out'
    export(root, out, ExportConfig(split=SPLIT, shard_size='1MB'))
    many = sorted(p.name for p in out.glob('*.tar'))
    export(root, out, ExportConfig(split=SPLIT, shard_size='1GB'))
    few = sorted(p.name for p in out.glob('*.tar'))
    assert len(few) < len(many) and set(few) <= set(many)
    assert sum(1 for p in out.glob('*.tar') for _ in tarfile.open(p)) == sum(len(tarfile.open(p).getnames()) for p in out.glob('*.tar'))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    def broken(records, files, dest, max_bytes):
        X.write_folder(records[:1], files, dest)
        raise OSError(28, 'No space left on device')
    monkeypatch.setitem(X.WRITERS, 'folder', broken)
    with pytest.raises(OSError): export(root, out, ExportConfig(format='folder', split=SPLIT))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before      # the old export, whole
    assert [p.name for p in tmp_path.iterdir()] == ['out']                               # no temporary folder left


def test_failed_clips_are_not_exported_and_an_empty_root_is_an_error(handoff_root, tmp_path):
    root = tmp_path / 'root'
    shutil.copytree(handoff_root[1], root)
    m = Manifest(root)
    m.record(S2, 'pose', StageResult('failed', f'{S2}: pose failed'))
    m.close()
    s = export(root, tmp_path / 'out', ExportConfig(format='folder', split=SPLIT))
    meta = pd.read_parquet(tmp_path / 'out' / 'metadata.parquet')
    assert S2 not in set(meta['clip']) and S1 in set(meta['clip']) and s['clips'] == len(meta)
    assert not any((tmp_path / 'out').glob(f'*/{S2}'))
    Manifest(tmp_path / 'empty').close()
    with pytest.raises(TalkfaceError, match='no clip to export'): export(tmp_path / 'empty', tmp_path / 'o2')
    with pytest.raises(TalkfaceError, match='no manifest.sqlite'): export(tmp_path / 'nothing', tmp_path / 'o3')
    with pytest.raises(TalkfaceError, match='not a talkface export'): export(root, handoff_root[0])
    with pytest.raises(TalkfaceError, match='unknown format'): export(root, tmp_path / 'o4', ExportConfig(format='zip'))


def test_parquet_and_folder_hold_the_same_content(handoff_root, exported, tmp_path):
    root = handoff_root[1]
    export(root, tmp_path / 'pq', ExportConfig(format='parquet', split=SPLIT))
    export(root, tmp_path / 'fo', ExportConfig(format='folder', split=SPLIT))
    rows = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / 'pq').glob('*-*.parquet'))]).set_index('clip')
    mp4 = Layout(root).path('videos_25fps', S1, '.mp4').read_bytes()
    assert rows['mp4'][S1] == mp4 and len(rows) == len(pd.read_parquet(tmp_path / 'pq' / 'metadata.parquet'))
    split = rows['split'][S1]
    assert (tmp_path / 'fo' / split / S1 / f'{S1}.mp4').read_bytes() == mp4
    assert np.array_equal(np.load(tmp_path / 'fo' / split / S1 / f'{S1}.landmarks.npy'), np.load(Layout(root).path('landmarks', S1, '.npy')))


def test_rebuild_from_release_metadata_reproduces_the_clips(handoff_root, tmp_path):
    inp, root = handoff_root
    export(root, tmp_path / 'rel', ExportConfig(format='metadata', split=SPLIT))
    rel = pd.read_parquet(tmp_path / 'rel' / 'metadata.parquet')
    assert list(rel.columns) == RELEASE and '/' not in ''.join(rel['source'])   # file names only
    res = rebuild(tmp_path / 'rel', inp, tmp_path / 'rebuilt')
    assert all(r.ok for r in res.values()), {c: r.reason for c, r in res.items()}
    for row in rel.to_dict('records'):
        c = row['clip']
        assert res[c].figures['frames'] == row['n_frames']
        a, b = X.crop_record(Layout(root), c), X.crop_record(Layout(tmp_path / 'rebuilt'), c)
        assert [a[k] for k in ('x', 'y', 'side', 'out_size')] == [b[k] for k in ('x', 'y', 'side', 'out_size')]
        fa = list(iter_frames(Layout(root).path('videos_25fps', c, '.mp4'), size=64))
        fb = list(iter_frames(Layout(tmp_path / 'rebuilt').path('videos_25fps', c, '.mp4'), size=64))
        assert len(fa) == len(fb) and np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(fa, fb)]) < 4
    again = export(tmp_path / 'rebuilt', tmp_path / 'again', ExportConfig(format='metadata', speakers=str(tmp_path / 'rebuilt' / 'speakers.csv'),
                                                                         split_file=str(tmp_path / 'rebuilt' / 'splits.csv')))
    same = pd.read_parquet(tmp_path / 'again' / 'metadata.parquet')      # a rebuilt root exports like any other: same speakers, splits
    key = ['clip', 'speaker', 'split', 'start', 'n_frames']
    assert same[key].sort_values('clip').reset_index(drop=True).equals(rel[key].sort_values('clip').reset_index(drop=True))
    bad = rebuild(tmp_path / 'rel', tmp_path, tmp_path / 'r2')            # wrong --sources: each clip fails with the reason
    assert all(r.status == 'failed' and 'not found' in r.reason for r in bad.values())
