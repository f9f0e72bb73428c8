"""Speed of scenes, crop+convert (with and without PNG frames) on 720p input, beside ffmpeg's plain decode.

Run explicitly (not part of the tests):  .venv/bin/python bench/bench_clips.py [--input X.mp4] [--repeat 3]

Without --input it builds a ~26 s 1280x720 29.97 fps test video with 5 cuts from the real HDTF clip
(when present) and the synthetic sample, re-encoded once (not timed). For each measure it prints
video-seconds processed per wall-second ("x real time"), the ratio to a plain ffmpeg decode of the
source timed right before it (so numbers from a busy, shared machine stay comparable), and the CPU
seconds spent per video-second (this process and its ffmpeg children), with what that CPU cost
means on two idle cores (2 / CPU-per-second, the rate a 2-worker pipeline reaches). Each measure is
repeated; the medians are printed.
"""
from __future__ import annotations
import argparse, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path


from talkface.core import Layout
from talkface.media import ffmpeg_exe, ffpath, probe, real_sample, run_ffmpeg
from talkface.sample import demo_sample
from talkface.scenes import ScenesConfig, scenes_clip
from talkface.crop import CropConfig, crop_clip
from talkface.convert import ConvertConfig, convert_clip


def make_input(dest: Path) -> Path:
    "A 720p video with cuts: real clip, sample, real clip, sample (re-encoded once)."
    parts = [p for p in (real_sample(), demo_sample(), real_sample(), demo_sample()) if p is not None]
    if len(parts) < 4: parts = [demo_sample()] * 3
    args = []
    for p in parts: args += ['-i', ffpath(p)]
    n = len(parts)
    fc = ''.join(f'[{i}:v]fps=30000/1001,format=yuv420p,setsar=1[v{i}];[{i}:a]aresample=44100[a{i}];' for i in range(n))
    fc += ''.join(f'[v{i}][a{i}]' for i in range(n)) + f'concat=n={n}:v=1:a=1[v][a]'
    run_ffmpeg(args + ['-filter_complex', fc, '-map', '[v]', '-map', '[a]', '-c:v', 'libx264', '-preset', 'veryfast',
                       '-crf', '20', '-c:a', 'aac', '-b:a', '128k', ffpath(dest)], dest)
    return dest


def timed(fn) -> tuple[float, float]:
    "Wall and CPU seconds (this process + finished children) of one call."
    import resource
    def cpu():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
    c0, t0 = cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu() - c0


def decode(src: Path):
    subprocess.run([ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-i', str(src), '-f', 'null', '-'], check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--input', default=None, help='a 720p video (default: build one with cuts)')
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args(argv)
    import statistics as st
    with tempfile.TemporaryDirectory(prefix='bench-clips-') as d:
        d = Path(d)
        src = Path(a.input) if a.input else make_input(d / 'bench_720p.mp4')
        info = probe(src)
        dur = info.video_duration
        print(f'input: {src.name} {info.width}x{info.height} {info.fps:.3f} fps {dur:.2f} s, {info.n_frames} frames')
        from talkface.faces import get_detector
        get_detector('faceboxes', 'cpu', max_side=CropConfig().det_side)      # load the model outside the timings
        rows, extra = [], {}

        def bench(what, fn, video_s, ref=src, ref_s=dur):
            speeds, ratios, cpus, decs = [], [], [], []
            for _ in range(a.repeat):
                td, _ = timed(lambda: decode(ref))
                tw, tc = timed(fn)
                speeds.append(video_s / tw); decs.append(ref_s / td); ratios.append((video_s / tw) / (ref_s / td)); cpus.append(tc / video_s)
            rows.append((what, video_s, st.median(speeds), st.median(ratios), st.median(cpus), st.median(decs)))

        def run_scenes():
            lay = Layout(d / 'scn'); shutil.rmtree(lay.root, ignore_errors=True)
            extra['scenes'] = scenes_clip(src, lay, ScenesConfig())
        bench('ffmpeg decode (-f null)', lambda: decode(src), dur)
        bench('scenes (detect + split, re-encode 25 fps)', run_scenes, dur)
        res = extra['scenes']
        rows[-1] = (rows[-1][0] + f" [{res.figures['n_scenes']} scenes]",) + rows[-1][1:]
        clips = [Path(o) for o in res.outputs]
        clip_dur = sum(probe(c).video_duration for c in clips)
        rl = real_sample()
        if rl is not None:
            def run_uncut():
                lay = Layout(d / 'one'); shutil.rmtree(lay.root, ignore_errors=True)
                scenes_clip(rl, lay, ScenesConfig())
            bench('scenes, one-shot HDTF clip (detect, then linked)', run_uncut, probe(rl).video_duration, rl, probe(rl).video_duration)

        def crop_convert(frames: bool):
            lay = Layout(d / 'cc'); shutil.rmtree(lay.root, ignore_errors=True)
            lay.dir('raw').mkdir(parents=True)
            for c in clips: os.link(c, lay.path('raw', c.stem, '.mp4'))
            for c in clips:
                crop_clip(c.stem, lay, CropConfig(encode=False))
                r = convert_clip(c.stem, lay, ConvertConfig(extract_frames=frames))
                assert r.ok, r.reason
        bench('crop+convert with PNG (one ffmpeg pass per clip)', lambda: crop_convert(True), clip_dur)
        bench('crop+convert without PNG', lambda: crop_convert(False), clip_dur)

        print(f"\n{'what':<58} {'video s':>7} {'x real time':>11} {'/ decode':>9} {'CPU s/s':>8} {'2 idle cores':>12}")
        for what, vs, speed, ratio, cpu, dec in rows:
            print(f'{what:<58} {vs:7.2f} {speed:11.1f} {ratio:9.3f} {cpu:8.3f} {2 / cpu:11.1f}x')
        print('\nx real time: video-seconds per wall-second (median of runs); / decode: that speed over the speed of a plain '
              'ffmpeg decode of the same source timed just before; CPU s/s: CPU seconds per video-second; 2 idle cores: 2 / CPU s/s.')
        print('targets: scenes >= 10x real time, crop+convert with PNG >= 6x real time (on the 2-core machine)')


if __name__ == '__main__':
    sys.exit(main())
