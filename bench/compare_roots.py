"""Compare two talkface output roots clip by clip: crop boxes, frame counts, wav lengths, PNG PSNR, landmarks, pose.

    .venv/bin/python bench/compare_roots.py ROOT_A ROOT_B

What the fused path is checked with (issue 16): a fused run against a stage-by-stage run of the same input
(`talkface run --keep scenes`), and against one with lossless scene files (`--keep scenes --set scenes.crf=0`).
PSNR prints 361 dB where the frames are the same bytes.
"""
import json, sys
from pathlib import Path
import numpy as np


def clip_rows(a: Path, b: Path):
    import cv2, soundfile as sf
    V = 'specified_formats/videos'
    clips = sorted(p.stem for p in (a / V / 'videos_25fps').glob('*.mp4'))
    other = sorted(p.stem for p in (b / V / 'videos_25fps').glob('*.mp4'))
    print('same clips:', clips == other, clips)
    for c in clips:
        ja, jb = (json.loads((r / 'cropped_faces' / f'{c}.json').read_text()) for r in (a, b))
        fa, fb = (sorted((r / V / 'video_frames' / c).glob('*.png')) for r in (a, b))
        same_size = ja['out_size'] == jb['out_size']
        psnr = [cv2.PSNR(cv2.imread(str(x)), cv2.imread(str(y))) for x, y in zip(fa, fb)] if same_size else [float('nan')]
        wa, wb = (sf.info(str(r / 'specified_formats/audios/audios_16k' / f'{c}.wav')).frames for r in (a, b))
        la, lb = (np.load(r / V / 'landmarks' / f'{c}.npy') for r in (a, b))
        lm = float(np.linalg.norm(la - lb, axis=-1).mean()) if la.shape == lb.shape else float('nan')
        pa, pb = (r / V / 'pose_orientations/pose_data' / f'{c}.npy' for r in (a, b))
        pose = float(np.abs(np.load(pa) - np.load(pb)).mean()) if pa.exists() and pb.exists() else float('nan')
        print(f"{c}: box {[(ja[k], jb[k]) for k in ('x', 'y', 'side')]}  frames {len(fa)}/{len(fb)}  wav {wa}/{wb}  "
              f"PSNR mean {np.mean(psnr):.1f} min {np.min(psnr):.1f} dB  landmarks {lm:.3f} px  pose {pose:.3f} deg")


if __name__ == '__main__':
    if len(sys.argv) != 3: sys.exit(__doc__)
    clip_rows(Path(sys.argv[1]), Path(sys.argv[2]))
