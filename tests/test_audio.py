"The audio stage: MFCC equality, tiny random encoders through the real loading code, VAD, bad audio, the CLI."
import json, os, subprocess, sys
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np
import pytest

from talkface.core import Layout, Manifest, BadInput, MissingWeights, TalkfaceError
from talkface.media import load_audio, real_sample, save_wav, run_ffmpeg, ffpath
from talkface import audio as A

SR = 16000
TALKFACE = str(Path(sys.executable).parent / 'talkface')


def psf_direct(x):
    "The original's computation, written out."
    import python_speech_features as psf
    m = psf.mfcc(signal=x, samplerate=16000, numcep=13, winlen=0.025, winstep=0.01)
    return np.hstack((m, psf.base.delta(m, 1), psf.base.delta(m, 2)))


@pytest.fixture(scope='module')
def sample():
    "(16 kHz mono samples, truth) of the ground-truth sample, else of the real clip, else skip."
    try:
        from talkface.sample import demo_sample, load_truth
        p = demo_sample()
        return load_audio(p), load_truth(p)
    except ImportError:
        if real_sample() is None: pytest.skip('neither the ground-truth sample nor the real clip is available')
        return load_audio(real_sample()), None


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "Tiny random models saved with save_pretrained: the real loading code reads them."
    d = tmp_path_factory.mktemp('models')
    return {k: A.make_random_model(k, d / k) for k in ('hubert', 'wavlm', 'whisper', 'ctc')}


def run_cli(*args):
    "`talkface audio ARGS` in this process: (exit status, stdout, stderr)."
    import contextlib, io
    from talkface.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(['audio', *[str(a) for a in args]])
    return rc, out.getvalue(), err.getvalue()


# ---- MFCC -------------------------------------------------------------------------------------

def test_mfcc_equals_python_speech_features_on_the_sample(sample):
    x, _ = sample
    m = A.mfcc(x)
    assert m.shape == (1 + int(np.ceil((len(x) - 400) / 160)), 39)
    assert np.abs(m - psf_direct(x)).max() <= 1e-5
    assert np.abs(A.mfcc(x, chunk_seconds=1.3) - m).max() <= 1e-9   # chunked framing is exact


@pytest.mark.skipif(real_sample() is None, reason='the real HDTF clip is not available')
def test_mfcc_on_the_real_clip_through_the_stage(tmp_path):
    x = load_audio(real_sample())
    lay = Layout(tmp_path)
    save_wav(lay.path('audios_16k', 'hdtf', '.wav'), x)
    r = A.audio_clip('hdtf', lay, A.AudioConfig(features=('mfcc',)))
    assert r.status == 'ok', r.reason
    saved = np.load(lay.path('mfcc', 'hdtf', '.npy'))
    wav = load_audio(lay.path('audios_16k', 'hdtf', '.wav'))
    assert saved.shape[1] == 39 and np.abs(saved - psf_direct(wav)).max() <= 1e-5
    assert A.check_alignment(saved, r.figures['n_frames'], 100) in (-1, 0, 1, 2, 3)


def test_mfcc_of_a_stereo_16k_wav_is_python_speech_features_on_the_channel_mean(sample, tmp_path):
    "The original's audios_16k/*.wav are 16 kHz stereo; librosa.load averaged the channels, and so do we."
    import soundfile as sf
    x, _ = sample
    lr = np.stack([x[:3 * SR], 0.5 * np.roll(x[:3 * SR], 400)], 1)
    (tmp_path / 'in').mkdir()
    sf.write(str(tmp_path / 'in' / 'st.wav'), lr, SR, subtype='PCM_16')
    back, _ = sf.read(str(tmp_path / 'in' / 'st.wav'), dtype='float64')
    want = psf_direct(back.mean(1))
    assert np.abs(A.mfcc(A.load_audio_16k(tmp_path / 'in' / 'st.wav')) - want).max() <= 1e-4
    rc, stdout, _ = run_cli('--feature', 'mfcc', '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', tmp_path / 'out')
    assert rc == 0 and '1 ok' in stdout, stdout
    assert np.abs(np.load(tmp_path / 'out' / 'st.npy') - want).max() <= 1e-4
    m = Manifest(tmp_path / 'out'); row = m.rows('audio')[0]; m.close()
    assert row['figures']['audio_in'] == '2 channels averaged'


@pytest.mark.skipif(real_sample() is None, reason='the real HDTF clip is not available')
def test_the_originals_stereo_wav_of_the_real_clip_through_the_command(models, tmp_path):
    "The original tree's audios_16k/<clip>.wav (16 kHz stereo): MFCC, HuBERT and Whisper with the original flags."
    d = tmp_path / 'audios_16k'; d.mkdir()
    run_ffmpeg(['-i', ffpath(real_sample()), '-vn', '-ar', 16000, '-ac', 2, '-c:a', 'pcm_s16le', ffpath(d / 'FAzSK8PLmGI.wav')], real_sample())
    assert A.read_audio_16k(d / 'FAzSK8PLmGI.wav').note == '2 channels averaged'
    for feat, extra in (('mfcc', []), ('hubert', ['--model_path', models['hubert']]), ('whisper', ['--model_path', models['whisper']])):
        out = tmp_path / f'{feat}_features'
        rc, stdout, err = run_cli('--feature', feat, *extra, '--audio_dir_path', d, '--audio_feature_saved_path', out,
                                  '--computed_device', 'cuda', '--padding_to_align_audio', 'True')
        assert rc == 0 and '1 clip(s): 1 ok ' in stdout, (feat, stdout, err)
        f = np.load(out / 'FAzSK8PLmGI.npy')
        assert abs(f.shape[-2] - (500 if feat == 'mfcc' else 250)) <= 2, (feat, f.shape)   # 100 Hz and 50 Hz rows over 5 s


# ---- alignment ---------------------------------------------------------------------------------

def test_alignment_helpers():
    assert (A.feats_per_frame(50), A.feats_per_frame(100)) == (2, 4)
    f = np.arange(20.)[:, None]
    assert A.frame_window(f, 0, 100, before=1, after=0)[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert A.frame_window(f, 4, 100)[:, 0].tolist() == [16, 17, 18, 19]
    assert A.check_alignment(f, 5, 100) == 0
    with pytest.raises(BadInput, match='x.npy: 20 feature rows at 100 Hz do not match 9 video frames'):
        A.check_alignment(f, 9, 100, path='x.npy')
    assert A.fit_length(f, 22)[-1, 0] == 19 and A.fit_length(f, 3).shape == (3, 1)


# ---- encoders ----------------------------------------------------------------------------------

def test_hubert_shapes_rate_padding_layers_dtype(sample, models):
    x, _ = sample
    enc = A.get_encoder('hubert', str(models['hubert']), 'cpu')
    assert A.get_encoder('hubert', str(models['hubert']), 'cpu') is enc        # loaded once per process
    F = A.n_video_frames(len(x))
    h = A.encode(x, enc)
    assert h.shape == (3, (len(x) - 400) // 320 + 1, 32) and h.dtype == np.float32   # 50 Hz: 320 samples per row
    hp = A.encode(x, enc, n_out=2 * F)
    assert hp.shape[1] == 2 * F and A.check_alignment(hp, F, 50) == 0
    assert np.array_equal(hp[:, :h.shape[1]], h)
    assert A.encode(x, enc, layers='last').shape[0] == 1
    assert np.allclose(A.encode(x, enc, layers='0,-1')[1], h[2])
    assert A.encode(x, enc, dtype='float16').dtype == np.float16
    with pytest.raises(TalkfaceError, match='has 3 hidden states'):
        A.encode(x, enc, layers='7')


def test_chunked_equals_single_pass_on_60s(sample, models):
    "Stated tolerance: CNN rows (hidden state 0) exact to 1e-5, transformer rows within 1e-2 relative L2."
    x, _ = sample
    x60 = np.tile(x, int(np.ceil(60 * SR / len(x))))[:60 * SR]
    enc = A.get_encoder('hubert', str(models['hubert']), 'cpu')
    one = A.encode(x60, enc, chunk_seconds=1e9)
    ck = A.encode(x60, enc, chunk_seconds=30, context_seconds=5)
    assert one.shape == ck.shape == (3, 2999, 32)
    rel = np.linalg.norm(one - ck, axis=(1, 2)) / np.linalg.norm(one, axis=(1, 2))
    assert rel[0] < 1e-5 and rel.max() < 1e-2, rel
    cos = (one * ck).sum(-1) / np.linalg.norm(one, axis=-1) / np.linalg.norm(ck, axis=-1)
    assert cos.min() > 0.999


def test_whisper_exact_against_fixed30(sample, models):
    x, _ = sample
    enc = A.get_encoder('whisper', str(models['whisper']), 'cpu')
    ex = A.whisper_encode(x, enc, 'exact')
    fx = A.whisper_encode(x, enc, 'fixed30')
    assert fx.shape == (3, 1500, 32)
    assert ex.shape == (3, int(np.ceil(len(x) / 320)), 32)
    assert np.allclose(fx[:, :ex.shape[1]], ex, atol=1e-5)
    F = A.n_video_frames(len(x))
    assert A.whisper_encode(x, enc, 'exact', n_out=2 * F).shape[1] == 2 * F
    assert A.whisper_encode(np.tile(x, 10)[:65 * SR], enc, 'exact', layers='last').shape == (1, 3250, 32)


def test_stage_all_features_and_skip_existing(sample, models, tmp_path):
    x, truth = sample
    lay = Layout(tmp_path)
    save_wav(lay.path('audios_16k', 'clip', '.wav'), x)
    cfg = A.AudioConfig(features=('mfcc', 'vad', 'hubert', 'hf', 'whisper', 'phonemes', 'asr'), model_path=str(models['hubert']),
                        hf_model_path=str(models['wavlm']), whisper_model_path=str(models['whisper']),
                        phoneme_model_path=str(models['ctc']), computed_device='auto', padding_to_align_audio=True)
    assert all(v == '' for v in A.available_features(cfg).values())
    r = A.audio_clip('clip', lay, cfg)
    assert r.status == 'ok', r.reason
    F = r.figures['n_frames']
    for kind in ('hubert', 'hf', 'whisper'):
        assert np.load(A.feature_outputs(lay, kind, 'clip')[0]).shape == (3, 2 * F, 32)
    ids_path, seg_path = A.feature_outputs(lay, 'phonemes', 'clip')
    assert np.load(ids_path).shape == (2 * F,)
    ph = json.loads(seg_path.read_text())
    assert ph['rate'] == 50 and ph['vocab']['4'] == 'a' and all(s < e for s, e, _ in ph['segments'])
    asr = json.loads(A.feature_outputs(lay, 'asr', 'clip')[0].read_text())
    assert set(asr) >= {'text', 'words', 'duration_s'}
    assert all(0 <= w['start'] <= w['end'] <= asr['duration_s'] for w in asr['words'])
    vad = json.loads(lay.path('vad', 'clip', '.json').read_text())
    assert len(vad['voiced']) == F
    if truth is not None:
        # the sample's channels averaged (as librosa) put its quiet voice near -23 dBFS, where Silero misses its weakest phrase
        assert abs(vad['speech_ratio'] - truth['voiced_fraction']) < 0.15
        # per video frame, VAD agrees with the truth's voiced flag on most frames
        tv = np.array(A.voiced_frames(truth['voiced_intervals'], F))
        assert (np.array(vad['voiced']) == tv).mean() > 0.75
    from talkface.core import is_done
    assert is_done(r, A.expect_audio('clip', lay, cfg))              # the driver's done rule: a rerun skips this clip
    leftovers = [p for p in tmp_path.rglob('*') if '.tmp-' in p.name]
    assert not leftovers


def test_layers_option_through_the_stage(sample, models, tmp_path):
    x, _ = sample
    lay = Layout(tmp_path)
    save_wav(lay.path('audios_16k', 'c', '.wav'), x[:3 * SR])
    cfg = A.AudioConfig(features='hubert', model_path=str(models['hubert']), layers='last', dtype='float16',
                        padding_to_align_audio=False, computed_device='cpu')
    assert A.audio_clip('c', lay, cfg).status == 'ok'
    h = np.load(lay.path('hubert', 'c', '.npy'))
    assert h.shape == (1, (3 * SR - 400) // 320 + 1, 32) and h.dtype == np.float16


def test_crash_mid_clip_leaves_no_output(sample, models, tmp_path, monkeypatch):
    x, _ = sample
    lay = Layout(tmp_path)
    save_wav(lay.path('audios_16k', 'c', '.wav'), np.tile(x, 8)[:40 * SR])
    enc = A.get_encoder('hubert', str(models['hubert']), 'cpu')
    calls = []
    real_forward = enc.model.forward
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise RuntimeError('simulated out of memory')
        return real_forward(*a, **k)
    monkeypatch.setattr(enc.model, 'forward', flaky)
    cfg = A.AudioConfig(features=('hubert',), model_path=str(models['hubert']), computed_device='cpu', chunk_seconds=20, context_seconds=2)
    from talkface.core import run_stage
    r = run_stage(A.audio_clip, 'c', lay, cfg)
    assert r.status == 'failed' and 'simulated out of memory' in r.reason
    assert not any(lay.dir('hubert').iterdir())                      # no half-written .npy, no temporary


# ---- VAD ---------------------------------------------------------------------------------------

def test_vad_on_the_sample_and_on_silence(sample, tmp_path):
    x, truth = sample
    ratio = A.speech_ratio(x)
    if truth is not None: assert abs(ratio - truth['voiced_fraction']) < 0.15     # the level: see test_stage_all_features...
    else: assert ratio > 0.8
    segs = A.vad_segments(x)
    assert segs and all(0 <= s < e <= len(x) / SR + 1e-3 for s, e in segs)
    silent = tmp_path / 'silent.wav'
    save_wav(silent, np.zeros(3 * SR, np.float32))
    assert A.speech_ratio(silent) == 0.0 and A.vad_segments(silent) == []
    lay = Layout(tmp_path / 'o')
    save_wav(lay.path('audios_16k', 'silent', '.wav'), np.zeros(3 * SR, np.float32))
    r = A.audio_clip('silent', lay, A.AudioConfig())
    assert r.status == 'skipped' and r.figures['speech_ratio'] == 0.0
    assert 'silent.wav: audio is silent' in r.reason
    assert not lay.path('vad', 'silent', '.json').exists()


# ---- bad audio and the CLI --------------------------------------------------------------------

def make_bad_corpus(d: Path, good: np.ndarray) -> dict:
    import soundfile as sf
    d.mkdir(parents=True, exist_ok=True)
    save_wav(d / 'good.wav', good)
    save_wav(d / 'short.wav', good[:SR // 10])
    save_wav(d / 'silence.wav', np.zeros(2 * SR, np.float32))
    sf.write(str(d / 'rate8k.wav'), A.resample(good, SR, 8000), 8000, subtype='PCM_16')
    sf.write(str(d / 'stereo.wav'), np.stack([good, good], 1), SR, subtype='PCM_16')
    data = (d / 'good.wav').read_bytes()
    (d / 'corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEjunk' + os.urandom(2000))
    (d / 'empty.wav').write_bytes(b'')
    run_ffmpeg(['-f', 'lavfi', '-i', 'color=c=gray:s=64x64:d=1', '-c:v', 'mpeg4', ffpath(d / 'novoice.mp4')], d / 'novoice.mp4')
    return {'short': 'too short: 0.10 s', 'silence': 'audio is silent', 'corrupt': 'not a readable audio file',
            'empty': 'file is empty (0 bytes)', 'novoice': 'no audio stream'}   # rate8k and stereo are read, as librosa.load reads them


def test_bad_audio_is_recorded_and_the_batch_goes_on(sample, tmp_path):
    x, _ = sample
    expect = make_bad_corpus(tmp_path / 'in', x[:4 * SR])
    out = tmp_path / 'out'
    rc, stdout, _ = run_cli('--feature', 'mfcc', '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', out)
    assert rc == 1                                                   # some files failed: the exit status says so
    assert '3 ok, 1 skipped, 4 failed' in stdout
    m = Manifest(out)
    rows = {r['clip']: r for r in m.rows('audio')}
    m.close()
    assert rows['good']['status'] == 'ok' and rows['good']['figures']['audio_in'] == '16 kHz mono, as is'
    assert rows['stereo']['figures']['audio_in'] == '2 channels averaged' and rows['rate8k']['figures']['audio_in'] == '8000 → 16000 Hz'
    for clip, why in expect.items():
        path, _, reason = rows[clip]['reason'].partition(': ')
        assert Path(path).stem == clip and Path(path).parent == tmp_path / 'in'   # the reason names the file
        assert why in reason, (clip, reason)
        assert not (out / f'{clip}.npy').exists()
    assert sorted(p.name for p in out.glob('*.npy')) == ['good.npy', 'rate8k.npy', 'stereo.npy']
    # the second run finds every file done; --retry_failed runs the failed ones again
    rc, stdout, _ = run_cli('--feature', 'mfcc', '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', out)
    assert rc == 1 and '(8 done before)' in stdout, stdout
    rc, stdout, _ = run_cli('--feature', 'mfcc', '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', out, '--retry_failed')
    assert rc == 1 and '(4 done before)' in stdout, stdout


def test_missing_weights_is_a_clear_error(tmp_path, sample):
    x, _ = sample
    save_wav(tmp_path / 'in' / 'a.wav', x[:SR])
    rc, _, err = run_cli('--feature', 'hubert', '--model_path', tmp_path / 'weights' / 'chinese-hubert-large',
                         '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', tmp_path / 'out')
    assert rc == 2
    for part in ('chinese-hubert-large', 'weights are missing', 'TencentGameMate/chinese-hubert-large',
                 'weights/README.md', '--feature mfcc or --feature vad works without them'):
        assert part in err, err
    with pytest.raises(MissingWeights, match='whisper-large-v2'):
        A.get_encoder('whisper', str(tmp_path / 'whisper-large-v2'), 'cpu')


def test_cli_hf_layers_and_the_real_command(sample, models, tmp_path):
    x, _ = sample
    save_wav(tmp_path / 'in' / 'a b.wav', x[:2 * SR])
    rc, stdout, _ = run_cli('--feature', 'hf', '--model_path', models['wavlm'], '--layers', '0,-1', '--padding_to_align_audio', 'False',
                            '--computed_device', 'cpu', '--audio_dir_path', tmp_path / 'in', '--audio_feature_saved_path', tmp_path / 'hf')
    assert rc == 0 and '1 ok' in stdout
    assert np.load(tmp_path / 'hf' / 'a b.npy').shape == (2, (2 * SR - 400) // 320 + 1, 32)
    r = subprocess.run([TALKFACE, 'audio', '--feature', 'vad', '--audio_dir_path', str(tmp_path / 'in'),
                        '--audio_feature_saved_path', str(tmp_path / 'vad')], capture_output=True, text=True,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'vad' / 'a b.json').read_text())['speech_ratio'] >= 0
    assert (tmp_path / 'vad' / 'manifest.sqlite').exists()


def test_fp16_code_path_and_not_an_ssl_encoder(sample, models):
    "fp16 is used only on CUDA; its code path runs on the CPU here through the loader, close to fp32."
    x, _ = sample
    x = x[:3 * SR]
    assert A.get_encoder('hubert', str(models['hubert']), 'cpu', fp16=True).fp16 is False
    e16 = A._load_encoder('hubert', str(models['hubert']), 'cpu', 'float16')
    e32 = A.get_encoder('hubert', str(models['hubert']), 'cpu')
    a, b = A.encode(x, e32), A.encode(x, e16)
    assert b.dtype == np.float32 and np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2
    w16 = A._load_encoder('whisper', str(models['whisper']), 'cpu', 'float16')
    w32 = A.get_encoder('whisper', str(models['whisper']), 'cpu')
    a, b = A.whisper_encode(x, w32), A.whisper_encode(x, w16)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2
    with pytest.raises(TalkfaceError, match='not a wav2vec2-style speech encoder'):
        A.get_encoder('hf', str(models['whisper']), 'cpu')
