"The fused path of `talkface run` (pass 1 measures, pass 2 converts from the source) against the stage-by-stage path."
import hashlib, json, os, shutil, sqlite3, subprocess
from pathlib import Path
import numpy as np
import pytest
from talkface.core import Layout, Manifest
from talkface.media import probe, real_sample
from conftest import BIN, make_inputs, tree_hashes

FOUR = 'scenes,filter,crop,convert'


def run(inp, out, *extra):
    r = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', FOUR, '--workers', '2', *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    return Manifest(out)


def rows(m: Manifest, stage: str) -> dict:
    return {r['clip']: r for r in m.rows(stage)}


def pngs(root: Path, clip: str) -> list[Path]:
    return sorted(Layout(root).path('frames', clip).glob('*.png'))


def digest(paths) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    "The sample (29.97 fps, one cut) through scenes..convert: fused, stage by stage (--keep scenes), and stage by stage with lossless scene files."
    d = tmp_path_factory.mktemp('fused')
    inp = make_inputs(d, 1)
    return inp, {name: (d / name, run(inp, d / name, *extra)) for name, extra in
                 (('fused', ()), ('split', ('--keep', 'scenes')), ('lossless', ('--keep', 'scenes', '--set', 'scenes.crf=0')))}


def test_a_fused_run_writes_no_scene_file_and_records_every_stage(roots):
    _, r = roots
    root, m = r['fused']
    assert not list(root.rglob('*-Scene-*.mp4')) or all('videos_25fps' in str(p) for p in root.rglob('*-Scene-*.mp4'))
    scenes = m.get('sample0', 'scenes')
    assert scenes.figures['how'] == 'fused' and scenes.figures['clips'] == ['sample0-Scene-001', 'sample0-Scene-002']
    for st in ('filter', 'crop', 'convert'):
        assert {c: x['status'] for c, x in rows(m, st).items()} == {'sample0-Scene-001': 'ok', 'sample0-Scene-002': 'ok'}, st
    box = json.loads(Layout(root).path('cropped', 'sample0-Scene-002', '.json').read_text())
    assert box['span']['n_frames'] == 75 and box['source'].endswith('sample0.mp4')


def test_fused_frames_are_the_stage_by_stage_frames_without_the_scene_encode(roots):
    "Against scene files encoded losslessly, the fused PNGs are byte for byte the same: the only difference is the x264 generation it skips."
    _, r = roots
    (fr, fm), (lr, lm) = r['fused'], r['lossless']
    for clip in ('sample0-Scene-001', 'sample0-Scene-002'):
        a, b = pngs(fr, clip), pngs(lr, clip)
        assert len(a) == len(b) > 0 and digest(a) == digest(b), clip
    for st, keys in (('crop', ('x', 'y', 'side')), ('filter', ('kept', 'n_frames', 'n_sampled', 'face_ratio', 'faces_max'))):
        for clip, row in rows(fm, st).items():
            f, g = row['figures'], rows(lm, st)[clip]['figures']
            assert {k: f[k] for k in keys} == {k: g[k] for k in keys}, (st, clip)


def test_fused_and_stage_by_stage_runs_agree(roots):
    "The default stage-by-stage run (an x264 crf 18 scene file in between): the same clips, cuts, boxes, frame counts, wav lengths; PSNR >= 40 dB."
    import cv2, soundfile as sf
    _, r = roots
    (fr, fm), (sr, sm) = r['fused'], r['split']
    assert fm.get('sample0', 'scenes').figures['cuts'] == sm.get('sample0', 'scenes').figures['cuts']
    assert sorted(rows(fm, 'convert')) == sorted(rows(sm, 'convert'))
    lay_f, lay_s = Layout(fr), Layout(sr)
    for clip in rows(fm, 'convert'):
        bf, bs = (json.loads(l.path('cropped', clip, '.json').read_text()) for l in (lay_f, lay_s))
        assert (bf['x'], bf['y'], bf['side']) == (bs['x'], bs['y'], bs['side'])
        assert probe(lay_f.path('videos_25fps', clip, '.mp4')).n_frames == probe(lay_s.path('videos_25fps', clip, '.mp4')).n_frames
        assert sf.info(str(lay_f.path('audios_16k', clip, '.wav'))).frames == sf.info(str(lay_s.path('audios_16k', clip, '.wav'))).frames
        a, b = pngs(fr, clip), pngs(sr, clip)
        assert len(a) == len(b)
        psnr = [cv2.PSNR(cv2.imread(str(x)), cv2.imread(str(y))) for x, y in zip(a, b)]
        assert min(psnr) >= 40, (clip, min(psnr))


def test_two_fused_runs_are_byte_identical(roots, tmp_path):
    inp, r = roots
    run(inp, tmp_path / 'again')
    assert tree_hashes(tmp_path / 'again') == tree_hashes(r['fused'][0])


def test_a_fused_root_run_again_with_keep_scenes_splits_again(roots, tmp_path):
    "A fused root has no scene files: a later run that keeps them redoes the split (and writes raw_data/), the rest stays valid."
    inp, r = roots
    out = tmp_path / 'out'
    shutil.copytree(r['fused'][0], out)
    m = run(inp, out, '--keep', 'scenes')
    assert m.get('sample0', 'scenes').figures['how'] == 'split'
    assert sorted(p.name for p in Layout(out).dir('raw').glob('*.mp4')) == ['sample0-Scene-001.mp4', 'sample0-Scene-002.mp4']


@pytest.mark.skipif(real_sample() is None, reason='the real HDTF clip is not in this checkout')
def test_the_real_clip_fused_is_the_stage_by_stage_run(tmp_path):
    "An uncut .mp4 is copied as its scene by the split: the fused run measures and converts the same file, every output the same bytes."
    inp = tmp_path / 'in'
    inp.mkdir()
    shutil.copy2(real_sample(), inp)
    run(inp, tmp_path / 'fused')
    run(inp, tmp_path / 'split', '--keep', 'scenes')
    f, s = tree_hashes(tmp_path / 'fused'), tree_hashes(tmp_path / 'split')
    ignore = ('scenes/', 'raw_data/')          # the split's copy and record, the fused run's record
    f, s = ({k: v for k, v in h.items() if not k.startswith(ignore) and not k.startswith('cropped_faces/')} for h in (f, s))
    assert f == s and any(k.endswith('000125.png') for k in f)
