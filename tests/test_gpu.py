"""The GPU batch path, on the CPU: the same batching, chunking and placement code with device `cpu` (and stand-in GPUs).

Batched encoders against one clip at a time (padded against unpadded, per layer), the memory bound of
chunking in rows, `--device` parsing, fallback and strict messages, GPU workers with a faked GPU count,
Ray's `num_gpus`, batched face detection and landmarks against one frame at a time, and the landmark
stage's batch mode.

The tests marked `cuda` run the same code on a real GPU against the CPU and skip where torch sees none
(`bench/gpu_check.sh` runs them on a device machine). Tolerances are relative RMS per hidden state
(`audio.layer_errors`): float32 batched against alone on one device `TOLERANCE['float32']` (1e-5);
CUDA float32 against the CPU `CUDA_FLOAT32` (cuDNN convolutions run in TF32 by default); float16 and
bfloat16 against float32 `TOLERANCE['float16']`, `TOLERANCE['bfloat16']`."""
import logging, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import cv2, numpy as np, pytest
from talkface import audio as A, devices, engines
from talkface.core import Layout, Stage
from talkface.devices import DeviceError, DeviceSpec, parse_device, placement, resolve_device
from talkface.media import frames, load_audio
from talkface.sample import demo_sample

TALKFACE = str(Path(sys.executable).parent / 'talkface')
SR = 16000
CUDA_FLOAT32 = 5e-3          # CUDA float32 against the CPU's float32, per layer: TF32 convolutions (cuDNN's default)


cuda = pytest.mark.skipif(not devices.cuda_available(), reason='torch sees no CUDA GPU here')


def decoded() -> Path|None:
    "Inputs decoded beforehand for a machine without ffmpeg (`$TALKFACE_GPU_INPUTS`, written by `bench/gpu_check.sh prepare`)."
    d = os.environ.get('TALKFACE_GPU_INPUTS')
    return Path(d) if d else None


@pytest.fixture(scope='module')
def wav():
    return np.load(decoded() / 'speech.npy') if decoded() else load_audio(demo_sample())


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "Tiny random models the tests save themselves: HuBERT and wav2vec2 (layer norm), a group-norm wav2vec2, Whisper."
    import torch, transformers as tf
    d = tmp_path_factory.mktemp('models')
    group = d / 'group'
    torch.manual_seed(0)
    tf.Wav2Vec2Model(tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(32,) * 7,
                                       num_conv_pos_embedding_groups=16, feat_extract_norm='group')).save_pretrained(group)
    tf.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(group)
    return {'hubert': A.get_encoder('hubert', A.make_random_model('hubert', d / 'hubert'), 'cpu'),
            'wav2vec2': A.get_encoder('hf', A.make_random_model('wav2vec2', d / 'wav2vec2'), 'cpu'),
            'wavlm': A.get_encoder('hf', A.make_random_model('wavlm', d / 'wavlm'), 'cpu'),
            'group': A.get_encoder('hf', group, 'cpu'),
            'whisper': A.get_encoder('whisper', A.make_random_model('whisper', d / 'whisper'), 'cpu')}


@pytest.fixture
def fake_gpus(monkeypatch):
    "Pretend this process sees `n` GPUs (placement and `resolve_device` read `gpu_count`)."
    def use(n):
        monkeypatch.setattr(devices, 'gpu_count', lambda: n)
        resolve_device.cache_clear()
    yield use
    resolve_device.cache_clear()


# ---- batched encoders against one clip at a time ----

@pytest.mark.parametrize('kind', ['hubert', 'wav2vec2', 'wavlm', 'group', 'whisper'])
def test_batched_equals_one_by_one_per_layer(models, wav, kind):
    enc = models[kind]
    clips = [wav[:int(s * SR)] for s in (1.0, 2.3, 0.6, 2.3)]
    one = (lambda x: A.whisper_encode(x, enc)) if kind == 'whisper' else (lambda x: A.encode(x, enc))
    alone = [one(x) for x in clips]
    together = A.encode_batch(clips, enc, max_seconds=10)
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        assert A.layer_errors(a, b).max() < A.TOLERANCE['float32']


@pytest.mark.parametrize('kind', ['hubert', 'wav2vec2', 'wavlm'])
def test_padded_equals_unpadded(models, wav, kind):
    "A short clip padded to a long one's length, with its attention mask, gives its own rows."
    enc = models[kind]
    short, long = wav[:SR], wav[:3 * SR]
    sel = list(range(enc.n_hidden))
    xs = [A.normalise_input(x, enc, True) for x in (short, long)]
    padded = A.padded_forward(enc, xs, sel)[0]
    unpadded = A.padded_forward(enc, xs[:1], sel)[0]
    assert padded.shape == unpadded.shape == (enc.n_hidden, A.n_rows(enc, SR), enc.model.config.hidden_size)
    assert A.layer_errors(unpadded, padded).max() < A.TOLERANCE['float32']


def test_forwards_longest_first_with_little_padding(models):
    "Forty clips of 0.5-8 s: the forwards take them longest first, each clip once, and pad under 15% of what they compute (in arrival order: far more)."
    enc = models['hubert']
    lens = np.random.default_rng(0).integers(SR // 2, 8 * SR, 40)
    wins = [w for i, n in enumerate(lens) for w in A.clip_windows(i, int(n), enc, 30, 5)]
    groups = A.window_batches(wins, enc, max_seconds=40)
    flat = [w.s1 - w.s0 for g in groups for w in g]
    assert flat == sorted(flat, reverse=True) and sorted(w.clip for g in groups for w in g) == list(range(40))
    def waste(gs): return sum(len(g) * max(w.s1 - w.s0 for w in g) for g in gs) / sum(flat) - 1
    k = max(len(g) for g in groups)
    assert waste(groups) < 0.15 < waste([wins[i:i + k] for i in range(0, len(wins), k)])


def test_group_norm_models_batch_equal_lengths_only(models, wav):
    enc = models['group']
    wins = [w for i, n in enumerate((SR, 2 * SR, SR, 3 * SR)) for w in A.clip_windows(i, n, enc, 30, 5)]
    for g in A.window_batches(wins, enc, max_seconds=100):
        assert len({w.s1 - w.s0 for w in g}) == 1
    assert [len(g) for g in A.window_batches(wins, models['hubert'], max_seconds=100)] == [4]   # layer norm: padding is fine


def test_bfloat16_within_tolerance(models, wav):
    import copy, torch
    enc = models['hubert']
    half = A.Encoder('hubert', enc.path, copy.deepcopy(enc.model).to(torch.bfloat16), enc.extractor, 'cpu')
    clips = [wav[:SR], wav[:2 * SR]]
    for a, b in zip([A.encode(x, enc) for x in clips], A.encode_batch(clips, half)):
        assert b.dtype == np.float32 and A.layer_errors(a, b).max() < A.TOLERANCE['bfloat16']


def test_chunking_bounds_each_forward_in_rows(models, wav):
    "A 200 s clip among short ones: every window at most chunk + 2 x context long, every forward within its budget, same rows as alone."
    enc = models['hubert']
    long = np.tile(wav, 45)[:200 * SR]
    clips = [long, wav[:SR], wav[:2 * SR]]
    chunk, context, budget = 20.0, 2.0, 50.0
    wins = [w for i, x in enumerate(clips) for w in A.clip_windows(i, len(x), enc, chunk, context)]
    rows = [A.n_rows(enc, w.s1 - w.s0) for w in wins]
    assert max(rows) <= (chunk + 2 * context) * 50 and len(wins) > 10
    for g in A.window_batches(wins, enc, max_seconds=budget):
        assert len(g) * max(w.s1 - w.s0 for w in g) <= budget * SR
    got = A.encode_batch(clips, enc, 'last', chunk, context, max_seconds=budget)
    want = A.encode(long, enc, 'last', chunk_seconds=chunk, context_seconds=context)
    assert got[0].shape == want.shape == (1, A.n_rows(enc, len(long)), 32)
    assert A.layer_errors(want, got[0]).max() < A.TOLERANCE['float32']


def test_written_to_files_and_padded_to_the_video(models, wav, tmp_path):
    enc = models['hubert']
    clips = [wav[:int(1.5 * SR)], wav[:SR]]
    n_outs = [2 * A.n_video_frames(len(x)) + 3 for x in clips]
    files = A.encode_batch(clips, enc, 'last', n_outs=n_outs, dests=[tmp_path / 'a.npy', tmp_path / 'b.npy'], dtype='float16')
    for f, x, n in zip(files, clips, n_outs):
        got, want = np.load(f), A.encode(x, enc, 'last', n_out=n)
        assert got.dtype == np.float16 and got.shape == want.shape
        assert np.allclose(got, want, atol=2e-3)


# ---- --device: parsing, fallback, strict ----

def test_parse_device():
    assert parse_device('cuda:2!') == DeviceSpec('cuda', 2, True)
    assert parse_device('') == DeviceSpec()
    for bad in ('gpu', 'cuda:a', 'cpu:1', 'tpu!'):
        with pytest.raises(DeviceError, match='is not a device'): parse_device(bad)


def test_fallback_and_strict_with_no_gpu(fake_gpus, caplog):
    fake_gpus(0)
    with caplog.at_level(logging.WARNING, logger='talkface'):
        assert resolve_device('cuda') == 'cpu' and resolve_device('cuda') == 'cpu'
    assert [r.getMessage() for r in caplog.records] == ['--device cuda: no CUDA GPU is visible here; running on the CPU']   # once
    with pytest.raises(DeviceError, match=r'--device cuda!: no CUDA GPU is visible here \(use --device cuda'): resolve_device('cuda!')
    assert resolve_device('auto') == 'cpu' and placement('cuda') == ('cpu', [])


def test_devices_with_fake_gpus(fake_gpus, monkeypatch):
    fake_gpus(2)
    assert [resolve_device(d) for d in ('auto', 'cuda', 'cuda:1', 'cpu')] == ['cuda:0', 'cuda:0', 'cuda:1', 'cpu']
    monkeypatch.setenv('TALKFACE_CUDA', 'cuda:1')               # inside the second GPU worker
    resolve_device.cache_clear()
    assert resolve_device('cuda') == 'cuda:1'
    assert placement('cuda') == ('cuda', [0, 1]) and placement('cuda:1!') == ('cuda:1', [1])
    with pytest.raises(DeviceError, match='no such CUDA GPU'): placement('cuda:5!')


def run_cli(args, cwd):
    return subprocess.run([TALKFACE, *args], capture_output=True, text=True, cwd=cwd)


def test_cli_device_cuda_without_gpu(tmp_path):
    if devices.gpu_count(): pytest.skip('this machine has a GPU')
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'a.mp4').write_bytes(demo_sample().read_bytes())
    r = run_cli(['run', '--input', 'in', '--output', 'out', '--stages', 'scenes', '--device', 'cuda', '--workers', '2'], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == ['--device cuda: no CUDA GPU is visible here; running on the CPU']
    for args in (['run', '--input', 'in', '--output', 'out2', '--device', 'cuda!'],
                 ['landmarks', '--input', 'in', '--output', 'out3', '--device', 'cuda:0!'],
                 ['run', '--input', 'in', '--output', 'out2', '--device', 'gpu']):
        r = run_cli(args, tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr
        assert '--device' in r.stderr
    assert not (tmp_path / 'out2').exists()


# ---- placement: GPU workers beside the CPU workers, Ray's num_gpus ----

def test_local_engine_one_gpu_worker_per_gpu(fake_gpus, tmp_path):
    from talkface.pipeline import RunConfig, make_engine
    fake_gpus(2)
    run = RunConfig(device='cuda', workers=2, gpu_batch=3)
    e = make_engine(run)
    try:
        assert e.gpu.gpus == [0, 1] and e.pool is not None
        gpu_stage = Stage('g', engines.where_it_ran, dict, {}, gpu=True)
        cpu_stage = Stage('c', engines.where_it_ran, dict, {})
        for c in 'abcdefg': e.submit(engines.Task('g', c, c), Layout(tmp_path), run, gpu_stage)
        for c in 'xy': e.submit(engines.Task('c', c, c), Layout(tmp_path), run, cpu_stage)
        assert sorted(len(t) for _, t in e.gpu.busy.values()) == [1, 1] and len(e.gpu.queue) == 5
        got = {t.clip: r.figures for t, r in e.results()}
    finally: e.close()
    assert {got[c]['gpu'] for c in 'abcdefg'} == {'cuda:0', 'cuda:1'}
    assert len({got[c]['pid'] for c in 'abcdefg'}) == 2                  # one process per GPU
    assert {got[c]['gpu'] for c in 'xy'} == {''}                         # CPU stages on the CPU workers
    assert not {got[c]['pid'] for c in 'xy'} & {got[c]['pid'] for c in 'abcdefg'}


def test_no_gpu_workers_on_the_cpu(fake_gpus):
    from talkface.pipeline import RunConfig, make_engine, place
    fake_gpus(0)
    e = make_engine(RunConfig(device='cuda', workers=1))
    assert e.gpu is None and place(RunConfig(device='cuda')) == ('cpu', [])
    fake_gpus(4)
    assert place(RunConfig(device='cpu')) == ('cpu', []) and place(RunConfig(device='cuda:2')) == ('cuda:2', [2])


def test_gpu_stage_settings():
    from talkface.landmarks import LandmarksConfig
    st = Stage('lm', engines.where_it_ran, LandmarksConfig, {}, gpu=lambda c: c.backend == 'pipnet')
    assert engines.wants_gpu(st, LandmarksConfig(backend='pipnet')) and not engines.wants_gpu(st, LandmarksConfig())


def test_ray_asks_for_a_gpu_for_gpu_stages(tmp_path):
    calls = []
    class Remote:
        def options(self, **kw):
            calls.append(kw)
            return SimpleNamespace(remote=lambda *a: object())
    for use_gpu in (True, False):
        e = engines.RayEngine.__new__(engines.RayEngine)
        e.remote, e.use_gpu, e.refs = Remote(), use_gpu, {}
        run = SimpleNamespace(stage_configs={})
        e.submit(engines.Task('g', 'a', 'a'), Layout(tmp_path), run, Stage('g', engines.where_it_ran, dict, {}, gpu=True))
        e.submit(engines.Task('c', 'a', 'a'), Layout(tmp_path), run, Stage('c', engines.where_it_ran, dict, {}))
    assert [c['num_gpus'] for c in calls] == [1, 0, 0, 0] and all(c['num_cpus'] == 1 for c in calls)


# ---- batched face models against one frame at a time ----

@pytest.fixture(scope='module')
def face_frames():
    "Batches of frames of one size: the ground-truth sample at four moments with a black frame among them; the real 720p clip's (scaled to 600 px on the device) when present."
    from talkface.media import real_sample
    if decoded():
        z = np.load(decoded() / 'frames.npz')
        imgs, real = list(z['demo']), (list(z['real']) if 'real' in z else [])
    else:
        imgs, path = [f.image for f in frames(demo_sample(), step=30)][:4], real_sample()
        real = [f.image for f in frames(path, step=40)][:3] if path else []
    imgs.insert(2, np.zeros_like(imgs[0]))
    return [imgs] + ([real] if real else [])


def test_detect_batch_equals_one_by_one(face_frames):
    "FaceBoxesV2 over a batch gives each frame the boxes it gets alone (through the prefetch and the same tensors a GPU gets), and OpenCV's one-frame boxes."
    from talkface.devices import device_batches
    from talkface.faces import FaceBoxes, iou
    det = FaceBoxes('cpu')
    for batch in face_frames:
        together = [b for _, x in device_batches(batch, len(batch), 'cpu') for b in det.detect_batch(x)]
        for f, t in zip(batch, together):
            alone = det.detect_batch(f[None])[0]
            assert t.shape == alone.shape and np.allclose(t, alone, atol=1e-2), (t, alone)
            one = det.detect(f)
            assert len(one) == len(t) and all(iou(p, q) > 0.98 and abs(p[4] - q[4]) < 0.02 for p, q in zip(t, one)), (t, one)
        assert [len(b) > 0 for b in together] == [f.any() for f in batch]      # a face in every frame but the black one


def test_pipnet_fit_batch_equals_torchlm_one_by_one(pipnet_ckpt, face_frames):
    "Crops of exactly 256 px (roi_align samples them as cv2.resize does): the batch of frames fitted at once equals torchlm's fit frame by frame."
    import torch
    from talkface.landmarks import PipnetLandmarker, pipnet_crops
    lm = PipnetLandmarker(pipnet_ckpt, 'cpu')
    imgs = [f for f in face_frames[0] if f.any()]
    box = np.array([500, 100, 714, 356], np.float32)                   # widened by 10% (and moved down): a 256 x 256 crop
    c = pipnet_crops([box], *imgs[0].shape[:2])[0]
    assert (c[2:] - c[:2]).tolist() == [256, 256]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).flip(1).float()
    together = lm.fit_batch(x, np.arange(len(imgs)), np.repeat(box[None], len(imgs), 0))
    alone = np.stack([lm.fit(f, box) for f in imgs])
    assert np.abs(together - alone).max() < 1e-3


def test_batch_landmarks_equal_one_by_one(pipnet_ckpt, face_frames):
    "The landmark batch path (detect, fit, settle) over five frames at once equals it frame by frame: same statuses, the same points."
    from talkface.faces import FaceBoxes
    from talkface.landmarks import PipnetLandmarker, batch_track
    from talkface.media import Frame
    det, lm = FaceBoxes('cpu'), PipnetLandmarker(pipnet_ckpt, 'cpu')
    for batch in face_frames:
        fr = [Frame(i, i / 25, f'{i + 1:06d}.png', im) for i, im in enumerate(batch)]
        together, alone = batch_track(fr, lm, det, batch_size=len(fr)), batch_track(fr, lm, det, batch_size=1)
        assert together.status == alone.status and together.pts.shape == (len(fr), 68, 2)
        np.testing.assert_allclose(together.pts, alone.pts, atol=1e-3)   # NaN (no face) in the same places
        assert together.status == ['detect' if f.any() else 'black' for f in batch]


# ---- the landmark stage in batch mode ----

@pytest.fixture(scope='module')
def pipnet_ckpt(tmp_path_factory):
    import torch
    from talkface.landmarks import PIPNET_FILE, build_pipnet
    p = tmp_path_factory.mktemp('pipnet') / PIPNET_FILE
    torch.manual_seed(0)
    torch.save(build_pipnet().state_dict(), p)
    return p


def test_landmark_stage_in_batch_mode(pipnet_ckpt, tmp_path):
    from talkface.landmarks import LandmarksConfig, landmarks_clip, load_landmarks
    lay = Layout(tmp_path / 'out')
    d = lay.path('frames', 'clip')
    d.mkdir(parents=True)
    imgs = [cv2.resize(f.image, (320, 180)) for f in frames(demo_sample(), step=20)][:5]
    imgs[2] = np.zeros_like(imgs[2])                                      # a black frame
    for i, im in enumerate(imgs): cv2.imwrite(str(d / f'{i + 1:06d}.png'), im)
    cfg = LandmarksConfig(backend='pipnet', weights=str(pipnet_ckpt), mode='batch', batch_size=2, check_and_padding=True)
    res = landmarks_clip('clip', lay, cfg)
    assert res.status == 'ok' and res.figures['frames'] == 5 and res.figures['n_black'] == 1 and res.figures['padded'] == 1
    names, pts, valid = load_landmarks(lay.dir('landmarks'), 'clip')
    assert pts.shape == (5, 68, 2) and valid.tolist() == [True, True, False, True, True] and np.isfinite(pts).all()
    stop = landmarks_clip('clip', lay, LandmarksConfig(backend='pipnet', weights=str(pipnet_ckpt), mode='batch', batch_size=2))
    assert stop.figures['written'] == 2 and stop.figures['stopped_at'] == '000003.png'   # the original's rule: stop at the first missing frame


# ---- papermill on a GPU (here: its clean fallback) ----

def test_batch_audio_notebook_with_device_cuda(tmp_path, wav):
    from talkface.media import save_wav
    save_wav(tmp_path / 'in' / 'a.wav', wav[:2 * SR])
    r = run_cli(['batch', 'audio', '--input', 'in', '--output', 'out', '-p', 'device', 'cuda!' if not devices.gpu_count() else 'cpu!x'], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and '--device' in r.stderr, r.stderr
    hubert = A.make_random_model('hubert', tmp_path / 'hubert')
    r = run_cli(['batch', 'audio', '--input', 'in', '--output', 'out', '-p', 'device', 'cuda', '-p', 'feature', 'hubert', '-p', 'model_path', str(hubert)], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if 'IPKernelApp' not in l]          # (the kernel's own note about its transport)
    if not devices.gpu_count():   # one warning, no traceback (the kernel may add notes of its own at shutdown)
        assert [l for l in lines if '--device' in l] == ['--device cuda: no CUDA GPU is visible here; running on the CPU'] and 'Traceback' not in r.stderr, r.stderr
    executed = tmp_path / 'out' / 'notebooks' / '10_audio.ipynb'
    assert executed.exists() and (tmp_path / 'out' / 'a.npy').exists()
    import json
    injected = [''.join(c['source']) for c in json.loads(executed.read_text())['cells'] if 'injected-parameters' in c['metadata'].get('tags', [])]
    assert 'device = "cpu"' in injected[0] or devices.gpu_count(), injected


def test_plain_papermill_audio_with_device_cuda(tmp_path, wav):
    "The README's papermill line (with -k and -l: cleaned notebooks carry no kernelspec): on a CPU-only machine it falls back, one warning, no traceback."
    import json
    from talkface.media import save_wav
    nb = Path(__file__).parent.parent / 'nbs' / '10_audio.ipynb'
    save_wav(tmp_path / 'in' / 'a.wav', wav[:2 * SR])
    r = subprocess.run([str(Path(sys.executable).parent / 'papermill'), str(nb), str(tmp_path / 'log.ipynb'), '-p', 'input_dir', str(tmp_path / 'in'),
                        '-p', 'output_dir', str(tmp_path / 'out'), '-p', 'feature', 'hubert', '-p', 'model_path', str(A.make_random_model('hubert', tmp_path / 'h')),
                        '-p', 'device', 'cuda', '--cwd', str(nb.parent),
                        '-k', 'python3', '-l', 'python'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'out' / 'a.npy').exists()
    outputs = [o for c in json.loads((tmp_path / 'log.ipynb').read_text())['cells'] for o in c.get('outputs', [])]
    assert not [o for o in outputs if o['output_type'] == 'error']
    assert devices.gpu_count() or any('running on the CPU' in ''.join(o.get('text', '')) for o in outputs)


def test_only_gpu_stages_get_the_gpu(fake_gpus):
    from talkface.core import stage_order
    from talkface.pipeline import RunConfig, prepare
    fake_gpus(1)
    run = RunConfig(device='cuda')
    prepare(run, stage_order())
    c = run.stage_configs
    assert (c['audio'].computed_device, c['filter'].device, c['crop'].device, c['landmarks'].device) == ('cuda', 'cpu', 'cpu', 'cpu')   # dlib: CPU
    run = RunConfig(device='cuda:0')
    run.stage_configs['landmarks'] = type(c['landmarks'])(backend='pipnet')
    prepare(run, stage_order())
    assert run.stage_configs['landmarks'].device == 'cuda:0'


def test_pipeline_audio_on_a_gpu_worker_in_batches(fake_gpus, models, wav, tmp_path):
    "A run whose audio stage goes to a (stand-in) GPU worker, several clips per call: the same files as a CPU run, within tolerance."
    from talkface.media import save_wav
    from talkface.pipeline import RunConfig, apply_settings, run_pipeline
    inp = tmp_path / 'in'
    for i, n in enumerate((1.0, 2.5, 1.7, 3.0)): save_wav(inp / f'c{i}.wav', wav[:int(n * SR)])
    settings = {'audio': {'features': 'mfcc,hubert', 'model_path': models['hubert'].path, 'layers': 'all'}}
    cpu = run_pipeline(apply_settings(RunConfig(input=str(inp), output=str(tmp_path / 'cpu'), stages='audio', device='cpu', workers=1), settings))
    fake_gpus(1)
    gpu = run_pipeline(apply_settings(RunConfig(input=str(inp), output=str(tmp_path / 'gpu'), stages='audio', device='cuda', workers=1,
                                                gpu_batch=3), settings))
    assert cpu.counts() == gpu.counts() == {'audio': {'ok': 4}}
    real = devices.cuda_available()                        # on a GPU machine the worker really runs on the GPU
    for i in range(4):
        a, b = (np.load(tmp_path / r / 'specified_formats/audios/hubert_features' / f'c{i}.npy') for r in ('cpu', 'gpu'))
        assert a.shape == b.shape and A.layer_errors(a, b).max() < (CUDA_FLOAT32 if real else A.TOLERANCE['float32'])
    log = (tmp_path / 'gpu' / 'talkface.log').read_text()
    assert ('running on the CPU' in log) != real            # the stand-in GPU worker fell back, as a real one never does
    assert 'audio: 1 clips at once' in log and 'audio: 3 clips at once' in log   # the first alone, the three that waited together


# ---- on a real GPU (skipped where torch sees none; bench/gpu_check.sh runs them on a device machine) ----

@cuda
def test_cuda_device_rule_on_a_gpu():
    import torch
    n = torch.cuda.device_count()
    resolve_device.cache_clear()
    assert resolve_device('cuda!') == resolve_device('auto') == 'cuda:0' and resolve_device(f'cuda:{n - 1}!') == f'cuda:{n - 1}'
    with pytest.raises(DeviceError, match='there is no GPU'): resolve_device(f'cuda:{n}!')
    assert placement('cuda') == ('cuda', list(range(n))) and placement('cpu') == ('cpu', [])


@cuda
def test_cuda_batches_through_pinned_memory():
    from talkface.devices import device_batches, staged
    imgs = [np.full((4, 6, 3), i, np.uint8) for i in range(5)]
    assert all(t.is_pinned() for _, t in staged(imgs, 2, np.stack, pin=True))
    got = [(g, t) for g, t in device_batches(imgs, 2, 'cuda:0')]
    assert [len(g) for g, _ in got] == [2, 2, 1] and all(t.device.type == 'cuda' for _, t in got)
    assert np.array_equal(np.concatenate([t.cpu().numpy() for _, t in got]), np.stack(imgs))


@cuda
@pytest.mark.parametrize('kind', ['hubert', 'wav2vec2', 'wavlm', 'group', 'whisper'])
def test_cuda_encoders_match_the_cpu(models, wav, kind):
    "Each clip's features on the GPU, many clips per forward, in float32, float16 and bfloat16, against the CPU's float32 clip by clip, per layer."
    import torch
    enc = models[kind]
    clips = [wav[:int(s * SR)] for s in (1.0, 2.3, 0.6, 2.3)]
    one = (lambda x: A.whisper_encode(x, enc)) if kind == 'whisper' else (lambda x: A.encode(x, enc))
    ref = [one(x) for x in clips]
    for half, tol in (('', CUDA_FLOAT32), ('float16', A.TOLERANCE['float16']), ('bfloat16', A.TOLERANCE['bfloat16'])):
        g = A.get_encoder(enc.kind, enc.path, 'cuda', fp16=half == 'float16', bf16=half == 'bfloat16')
        assert g.device.startswith('cuda') and A.model_dtype(g) == getattr(torch, half or 'float32')
        err = max(A.layer_errors(a, b).max() for a, b in zip(ref, g.encode_many(clips)))
        print(f'{kind} cuda {half or "float32"} batched vs cpu float32 alone: worst layer {err:.1e} (tolerance {tol:g})')
        assert err < tol


@cuda
def test_cuda_padding_changes_nothing_on_the_gpu(models, wav):
    g = A.get_encoder('hubert', models['hubert'].path, 'cuda')
    sel = list(range(g.n_hidden))
    xs = [A.normalise_input(x, g, True) for x in (wav[:SR], wav[:3 * SR])]
    err = A.layer_errors(A.padded_forward(g, xs[:1], sel)[0], A.padded_forward(g, xs, sel)[0]).max()
    print(f'hubert cuda float32 padded vs unpadded: worst layer {err:.1e}')
    assert err < CUDA_FLOAT32


@cuda
def test_cuda_memory_bounded_by_the_chunk(models, wav):
    "Peak GPU memory encoding 200 s in 10 s chunks is at most 1.2x that for 20 s (the output stays on the host)."
    import torch
    g = A.get_encoder('hubert', models['hubert'].path, 'cuda')
    def peak(seconds):
        x = np.tile(wav, seconds * SR // len(wav) + 1)[:seconds * SR]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        A.encode(x, g, 'all', chunk_seconds=10, context_seconds=2)
        return torch.cuda.max_memory_allocated() - base
    short, long = peak(20), peak(200)
    print(f'peak GPU memory: 20 s {short / 2**20:.1f} MiB, 200 s {long / 2**20:.1f} MiB')
    assert long <= 1.2 * short


@cuda
def test_cuda_face_models_match_the_cpu(pipnet_ckpt, face_frames):
    "FaceBoxesV2 and the landmark batch path on the GPU against the CPU: the same faces, points within a pixel or so (random PIPNet weights)."
    from talkface.devices import device_batches
    from talkface.faces import FaceBoxes, iou
    from talkface.landmarks import PipnetLandmarker, batch_track
    from talkface.media import Frame
    cpu, gpu = FaceBoxes('cpu'), FaceBoxes('cuda')
    assert gpu.device.startswith('cuda')
    for batch in face_frames:
        for group, x in device_batches(batch, 3, gpu.device):
            assert x.device.type == 'cuda'
            for f, got in zip(group, gpu.detect_batch(x)):
                want = cpu.detect(f)
                assert len(got) == len(want) and all(iou(p, q) > 0.98 for p, q in zip(got, want)), (got, want)
    fr = [Frame(i, i / 25, f'{i + 1:06d}.png', im) for i, im in enumerate(face_frames[0])]
    tc = batch_track(fr, PipnetLandmarker(pipnet_ckpt, 'cpu'), cpu, 4)
    tg = batch_track(fr, PipnetLandmarker(pipnet_ckpt, 'cuda'), gpu, 4)
    assert tc.status == tg.status
    err = np.abs(tc.pts - tg.pts)[np.isfinite(tc.pts)]
    print(f'landmarks cuda vs cpu: median {np.median(err):.2e} px, 95th percentile {np.percentile(err, 95):.2e} px')
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 2.0
