"The loader: audio rows = 4 x frames (MFCC) and 2 x frames (50 Hz), the frame start maps to the right audio, workers, exports."
import pickle
import numpy as np, pytest
from torch.utils.data import DataLoader
from talkface.core import Layout, TalkfaceError
from talkface.data import TalkingFaceDataset, decode_window
from talkface.export import ExportConfig, export
from talkface.media import iter_frames
from talkface.sample import demo_sample, load_truth

T = 20


@pytest.mark.parametrize('audio,k', [('mfcc', 4), ('hubert', 2), ('wav', 640)])
def test_every_item_has_exactly_its_frames_audio_rows(handoff_root, audio, k):
    ds = TalkingFaceDataset(handoff_root[1], frames=T, audio=audio, stride=7)
    assert len(ds) > 10
    for i in range(len(ds)):
        it = ds[i]
        assert it['frames'].shape[0] == T and it['frames'].dtype == np.uint8 and it['frames'].shape[-1] == 3
        assert (it['audio'].shape[-2] if audio != 'wav' else len(it['audio'])) == k * T
        assert it['landmarks'].shape == (T, 68, 2) and it['pose'].shape == (T, 3) and it['aus'].shape[0] == T
        assert it['speaker'] and it['clip'] and it['start'] % 7 == 0


def test_the_start_maps_to_the_right_audio(handoff_root):
    "Each window's audio, placed at `time + row / rate` in the source, follows the sample's truth envelope; 0.2 s off it does not."
    truth = load_truth(demo_sample())
    tt = np.arange(truth['n_frames']) / truth['fps']
    env = lambda t: np.interp(t, tt, truth['mouth_open'])
    for audio, rate, energy in (('mfcc', 100, lambda a: a[:, 0]),
                                ('wav', 25, lambda a: np.sqrt((a.reshape(-1, 640) ** 2).mean(1)))):   # RMS per frame
        ds = TalkingFaceDataset(handoff_root[1], frames=T, audio=audio, stride=T)
        items = [ds[i] for i in range(len(ds)) if ds[i]['clip'].startswith('talkface_sample')]
        assert {it['clip'] for it in items} == {'talkface_sample-Scene-001', 'talkface_sample-Scene-002'}   # the second starts at 5.005 s
        e = np.concatenate([energy(it['audio']) for it in items])
        t = np.concatenate([it['time'] + (np.arange(len(e) // len(items)) + 0.5) / rate for it in items])   # row centres
        r, off = np.corrcoef(e, env(t))[0, 1], np.corrcoef(e, env(t + 0.2))[0, 1]
        assert r > 0.8 and r - off > 0.15, (audio, r, off)


def test_mp4_windows_are_the_video_frames(handoff_root):
    clip = 'talkface_sample-Scene-001'
    video = Layout(handoff_root[1]).path('videos_25fps', clip, '.mp4')
    every = [f[..., ::-1] for f in iter_frames(video)]
    for start in (0, 1, 37, 100, len(every) - T):
        w = decode_window(str(video), start, T)
        assert np.abs(w.astype(int) - np.stack(every[start:start + T]).astype(int)).mean() < 0.5, start
    png = TalkingFaceDataset(handoff_root[1], frames=T)
    mp4 = TalkingFaceDataset(handoff_root[1], frames=T, png=False)
    assert np.abs(png[3]['frames'].astype(int) - mp4[3]['frames'].astype(int)).mean() < 1.5


def test_a_dataloader_with_workers(handoff_root):
    ds = TalkingFaceDataset(handoff_root[1], frames=8, stride=8, size=96)
    assert len(pickle.dumps(ds)) < 100_000
    n = 0
    for b in DataLoader(ds, batch_size=3, num_workers=2):
        assert tuple(b['frames'].shape[1:]) == (8, 96, 96, 3) and tuple(b['audio'].shape[1:]) == (32, 39)
        assert float(b['landmarks'].max()) <= 96 * 1.2
        n += len(b['clip'])
    assert n == len(ds)


@pytest.mark.parametrize('fmt', ['webdataset', 'folder'])
def test_an_export_serves_the_same_windows(handoff_root, tmp_path, fmt):
    out = tmp_path / 'out'
    export(handoff_root[1], out, ExportConfig(format=fmt, split='train=0.5,val=0.5', shard_size='3MB'))
    a = TalkingFaceDataset(handoff_root[1], frames=T, png=False)
    b = TalkingFaceDataset(out, frames=T)
    assert len(a) == len(b)
    by = {(x['clip'], x['start']): x for x in (b[i] for i in range(len(b)))}
    for i in range(0, len(a), 3):
        x, y = a[i], by[(a[i]['clip'], a[i]['start'])]
        assert np.array_equal(x['frames'], y['frames']) and np.array_equal(x['audio'], y['audio'])
        assert np.array_equal(x['landmarks'], y['landmarks']) and x['time'] == y['time'] and x['speaker'] == y['speaker']
    parts = [TalkingFaceDataset(out, frames=T, split=s) for s in ('train', 'val')]
    assert sum(len(p) for p in parts) == len(b) and not {c.speaker for c in parts[0].clips} & {c.speaker for c in parts[1].clips}


def test_bad_input_is_a_clear_error(handoff_root, tmp_path):
    root = handoff_root[1]
    with pytest.raises(TalkfaceError, match='unknown audio feature'): TalkingFaceDataset(root, audio='nope')
    with pytest.raises(TalkfaceError, match='has no splits'): TalkingFaceDataset(root, split='train')
    with pytest.raises(TalkfaceError, match='not a talkface root or export'): TalkingFaceDataset(tmp_path)
    with pytest.raises(TalkfaceError, match='no clip with a video and whisper'): TalkingFaceDataset(root, audio='whisper')
    export(root, tmp_path / 'pq', ExportConfig(format='parquet'))
    with pytest.raises(TalkfaceError, match='parquet export'): TalkingFaceDataset(tmp_path / 'pq')
