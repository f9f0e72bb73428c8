"""Sync benchmark (run explicitly; not part of the tests).

    .venv/bin/python bench/bench_sync.py                 # the sample (and the real clip when present), 5 s and tiled to 60 s / 600 s
    .venv/bin/python bench/bench_sync.py --repeat 50

Times the `landmarks` backend given landmarks and the 16 kHz samples (what the stage does after loading its inputs:
mel energies, loudness, mouth features, the lag search over +-15 frames, confidence and 2 s windows), pinned to one
core with one thread per library, and prints the real-time factor (seconds of clip per second of compute; the target
is >= 500). The inputs come from running scenes..landmarks over the clip once (not timed).
"""
import os
for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS'): os.environ[_v] = '1'
import argparse, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np


def clip_inputs(video, work: Path):
    "(landmarks with NaN rows for frames without a face, 16 kHz samples) of the first clip the pipeline makes of `video`."
    from talkface.core import Layout
    from talkface.landmarks import load_landmarks
    from talkface.media import load_audio
    from talkface.pipeline import RunConfig, run_pipeline
    (work / 'in').mkdir(parents=True)
    shutil.copy2(video, work / 'in' / Path(video).name)
    run_pipeline(RunConfig(input=str(work / 'in'), output=str(work / 'out'), stages='scenes,filter,crop,convert,landmarks', workers=1))
    lay = Layout(work / 'out')
    clip = sorted(p.stem for p in lay.dir('audios_16k').glob('*.wav'))[0]
    _, pts, valid = load_landmarks(lay.dir('landmarks'), clip)
    return np.where(valid[:, None, None], pts, np.nan), load_audio(lay.path('audios_16k', clip, '.wav'))


def tiled(pts, audio, seconds: float):
    "The clip repeated to about `seconds` (whole frames, 640 samples each)."
    reps = max(1, int(round(seconds * 25 / len(pts))))
    return np.concatenate([pts] * reps), np.concatenate([audio[:len(pts) * 640]] * reps)


def time_score(scorer, pts, audio, repeat: int) -> float:
    "Median seconds of one `scorer.score` call over `repeat` calls (after one warm-up)."
    scorer.score(pts, audio)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter(); scorer.score(pts, audio); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeat', type=int, default=20)
    p.add_argument('--long', type=float, nargs='*', default=[60, 600], help='also time the clip tiled to these many seconds')
    a = p.parse_args(argv)
    try: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError): pass
    from talkface.sample import demo_sample
    from talkface.media import real_sample
    from talkface.sync import LandmarksScorer
    sc = LandmarksScorer()
    work = Path(tempfile.mkdtemp(prefix='bench-sync-'))
    try:
        clips = {'sample': demo_sample(), 'hdtf': real_sample()}
        print(f"{'clip':<8} {'seconds':>8} {'ms per call':>12} {'x real time':>12}")
        for name, video in clips.items():
            if video is None: continue
            pts, audio = clip_inputs(video, work / name)
            for secs in [len(pts) / 25, *a.long]:
                P, X = tiled(pts, audio, secs)
                dur = len(P) / 25
                t = time_score(sc, P, X, a.repeat if dur < 100 else max(3, a.repeat // 10))
                print(f'{name:<8} {dur:8.1f} {t * 1e3:12.2f} {dur / t:12.0f}')
    finally: shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__': sys.exit(main())
