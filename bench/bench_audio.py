"""Audio stage benchmark (run explicitly; not part of the tests).

    .venv/bin/python bench/bench_audio.py                      # all: MFCC RTF, HuBERT-large RTF, memory 60 s vs 600 s
    .venv/bin/python bench/bench_audio.py --skip_large         # without the HuBERT-large timing
    .venv/bin/python bench/bench_audio.py --memory_size large  # the memory test with the large architecture (slow on a CPU)

Prints real-time factors (compute seconds per second of audio; < 1 is faster than real time) for MFCC and for a
randomly initialised model with HuBERT-large's architecture (316 M parameters) on the CPU, and the peak resident
memory of one process encoding 60 s and 600 s of audio with chunking (all hidden states written to a .npy).
Target: peak for 600 s within 1.5x of peak for 60 s. Each memory case runs in its own subprocess so peaks don't mix.
No weights are downloaded: the models are random.
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

SR = 16000


def audio(seconds: float) -> np.ndarray:
    "`seconds` of speech-like audio: the sample (or real clip) tiled, else noise."
    x = None
    try:
        from talkface.sample import demo_sample
        from talkface.media import load_audio
        x = load_audio(demo_sample())
    except Exception:
        from talkface.media import real_sample, load_audio
        if real_sample(): x = load_audio(real_sample())
    if x is None: x = np.random.default_rng(0).normal(0, .1, 5 * SR).astype(np.float32)
    n = int(seconds * SR)
    return np.tile(x, n // len(x) + 1)[:n].copy()


def random_encoder(size: str):
    "An in-memory random HuBERT (`tiny`, `base` or `large` architecture) wrapped as a talkface Encoder."
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
    from talkface import audio as A
    A.quiet_transformers()
    torch.manual_seed(0)
    arch = {'tiny': dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(32,) * 7,
                         feat_extract_norm='layer', do_stable_layer_norm=True),
            'base': {},
            'large': dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm='layer', do_stable_layer_norm=True, conv_bias=True)}[size]
    model = HubertModel(HubertConfig(**arch)).eval()
    enc = A.Encoder('hubert', f'random-{size}', model, Wav2Vec2FeatureExtractor(do_normalize=True), 'cpu', False)
    enc.stride, enc.receptive = A._conv_geometry(model.config)
    return enc


def rss_mb() -> float:
    "Peak resident memory of this process so far (VmHWM; ru_maxrss would carry the parent's peak across exec)."
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    "One memory case, in its own process: load, encode `seconds` of audio in chunks to a .npy, report peaks."
    import torch
    torch.set_num_threads(args.threads)
    from talkface import audio as A
    x = audio(args.seconds)
    if args.what == 'mfcc':
        base = rss_mb(); t0 = time.perf_counter(); m = A.mfcc(x); dt = time.perf_counter() - t0
        print(json.dumps({'what': 'mfcc', 'seconds': args.seconds, 'after_load_mb': round(base), 'peak_mb': round(rss_mb()),
                          'compute_s': round(dt, 2), 'shape': list(m.shape)})); return
    enc = random_encoder(args.what)
    base = rss_mb()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        A.encode(x, enc, 'all', 2 * A.n_video_frames(len(x)), args.chunk_seconds, args.context_seconds, dest=Path(d, 'h.npy'))
        dt = time.perf_counter() - t0
        shape = list(np.load(Path(d, 'h.npy'), mmap_mode='r').shape)
    print(json.dumps({'what': f'hubert-{args.what}', 'seconds': args.seconds, 'after_load_mb': round(base), 'peak_mb': round(rss_mb()),
                      'compute_s': round(dt, 1), 'rtf': round(dt / args.seconds, 3), 'shape': shape}))


def run_child(what: str, seconds: float, a) -> dict:
    cmd = [sys.executable, __file__, '--child', '--what', what, '--seconds', str(seconds), '--threads', str(a.threads),
           '--chunk_seconds', str(a.chunk_seconds), '--context_seconds', str(a.context_seconds)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    if r.returncode != 0: raise SystemExit(f'{what} {seconds} s failed:\n{r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--mfcc_seconds', type=float, default=60)
    p.add_argument('--large_seconds', type=float, default=10, help='audio length for the HuBERT-large timing')
    p.add_argument('--skip_large', action='store_true')
    p.add_argument('--memory_size', default='base', choices=['tiny', 'base', 'large'], help='architecture for the memory test')
    p.add_argument('--short', type=float, default=60); p.add_argument('--long', type=float, default=600)
    p.add_argument('--chunk_seconds', type=float, default=30); p.add_argument('--context_seconds', type=float, default=5)
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--what', default='base', help=argparse.SUPPRESS); p.add_argument('--seconds', type=float, default=60, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child: return child(a)

    import torch
    torch.set_num_threads(a.threads)
    from talkface import audio as A
    print(f'# talkface audio benchmark: CPU, torch threads={a.threads}, {os.cpu_count()} cores visible')

    rows = [run_child('mfcc', s, a) for s in (a.short, a.long)]
    rows += [run_child(a.memory_size, s, a) for s in (a.short, a.long)]

    x = audio(a.mfcc_seconds)
    A.mfcc(x[:SR])
    t0 = time.perf_counter(); m = A.mfcc(x); dt = time.perf_counter() - t0
    print(f'MFCC (T,39) {m.shape}: {dt:.2f} s for {a.mfcc_seconds:g} s of audio -> RTF {dt / a.mfcc_seconds:.4f}')

    if not a.skip_large:
        enc = random_encoder('large')
        n = sum(p.numel() for p in enc.model.parameters())
        xl = audio(a.large_seconds)
        A.encode(xl[:SR], enc)   # warm-up
        t0 = time.perf_counter(); h = A.encode(xl, enc, 'all', 2 * A.n_video_frames(len(xl))); dt = time.perf_counter() - t0
        print(f'HuBERT-large architecture (random, {n / 1e6:.0f} M params) {h.shape}: {dt:.1f} s for {a.large_seconds:g} s '
              f'of audio -> RTF {dt / a.large_seconds:.3f}')
        del enc, h
    print(f'\npeak resident memory, one process each, chunks of {a.chunk_seconds:g} s with {a.context_seconds:g} s context:')
    for r in rows:
        extra = f", compute {r['compute_s']} s" + (f", RTF {r['rtf']}" if 'rtf' in r else '')
        print(f"  {r['what']:<12} {r['seconds']:>5g} s: peak {r['peak_mb']:>5} MB (after load {r['after_load_mb']} MB){extra}, shape {r['shape']}")
    for what in ('mfcc', f'hubert-{a.memory_size}'):
        s, l = [r for r in rows if r['what'] == what]
        ratio = l['peak_mb'] / s['peak_mb']
        print(f'  {what}: peak {a.long:g} s / peak {a.short:g} s = {ratio:.2f}  (target <= 1.5: {"met" if ratio <= 1.5 else "NOT met"})')


if __name__ == '__main__':
    main()
