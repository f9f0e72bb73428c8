"""Training hand-off benchmark (run explicitly; not part of the tests).

    .venv/bin/python bench/bench_export.py                     # builds a root from the sample (+ the HDTF clip), copies x4
    .venv/bin/python bench/bench_export.py --root ROOT         # an existing talkface root (identity run or not)

Rows:
- export throughput: GB/s written by `talkface.export.export` for each format (webdataset, parquet, folder), from the
  bytes under OUT and the wall time of the call (including the speaker clustering and the card);
- loader throughput: items/s of `TalkingFaceDataset` through a DataLoader with 2 workers, frames from the PNGs and
  decoded from the 25 fps mp4 (and from the webdataset shards), T frames per item, MFCC audio.
"""
import argparse, json, shutil, sys, tempfile, time
from pathlib import Path


def make_root(d: Path, copies: int) -> Path:
    "The whole pipeline and the identity stage over `copies` copies of the sample (and of the real HDTF clip when present)."
    from talkface.identity import identity_root
    from talkface.media import real_sample
    from talkface.pipeline import RunConfig, run_pipeline
    from talkface.sample import demo_sample
    inp = d / 'input'; inp.mkdir(parents=True)
    for k in range(copies):
        for p in [demo_sample()] + ([real_sample()] if real_sample() else []): shutil.copy(p, inp / f'{p.stem}_{k}{p.suffix}')
    root = d / 'root'
    run_pipeline(RunConfig(input=str(inp), output=str(root), workers=2)).close()
    identity_root(root)
    return root


def export_rows(root: Path, d: Path) -> list[dict]:
    from talkface.export import ExportConfig, export
    rows = []
    for fmt in ('webdataset', 'parquet', 'folder'):
        out = d / f'out-{fmt}'
        t0 = time.perf_counter()
        s = export(root, out, ExportConfig(format=fmt, split='train=0.8,val=0.1,test=0.1', shard_size='64MB'))
        dt = time.perf_counter() - t0
        rows.append(dict(row=f'export {fmt}', clips=s['clips'], gb=round(s['bytes'] / 1e9, 4), seconds=round(dt, 3),
                         gb_per_s=round(s['bytes'] / 1e9 / dt, 4)))
    return rows


def loader_rows(root: Path, d: Path, frames: int, workers: int, batches: int) -> list[dict]:
    from torch.utils.data import DataLoader
    from talkface.data import TalkingFaceDataset
    rows = []
    for name, path, png in (('png', root, True), ('mp4', root, False), ('webdataset', d / 'out-webdataset', True)):
        ds = TalkingFaceDataset(path, frames=frames, stride=frames, png=png, size=256)
        dl = DataLoader(ds, batch_size=4, num_workers=workers, shuffle=True, persistent_workers=False)
        n, t0 = 0, time.perf_counter()
        for k, b in enumerate(dl):
            n += len(b['clip'])
            if k + 1 >= batches: break
        dt = time.perf_counter() - t0
        rows.append(dict(row=f'loader {name}', workers=workers, frames=frames, items=n, seconds=round(dt, 3), items_per_s=round(n / dt, 2)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=None, help='an existing talkface root (default: build one from the sample)')
    p.add_argument('--copies', type=int, default=4, help='copies of the inputs when building a root')
    p.add_argument('--frames', type=int, default=16)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--batches', type=int, default=50)
    a = p.parse_args(argv)
    d = Path(tempfile.mkdtemp(prefix='bench-export-'))
    try:
        root = Path(a.root) if a.root else make_root(d, a.copies)
        for r in export_rows(root, d) + loader_rows(root, d, a.frames, a.workers, a.batches): print(json.dumps(r))
    finally: shutil.rmtree(d, ignore_errors=True)


if __name__ == '__main__': main()
