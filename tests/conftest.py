"Shared fixtures: one uninterrupted pipeline run over the ground-truth sample, reused by several test files."
import hashlib, json, shutil, sys
from pathlib import Path
import pytest
from talkface.pipeline import RunConfig, run_pipeline
from talkface.sample import demo_sample

BIN = Path(sys.executable).parent
STAGES = 'scenes,filter,crop,convert,landmarks,pose,aus,audio'
IGNORED = {'run.json', 'manifest.sqlite', 'manifest.sqlite-wal', 'manifest.sqlite-shm', 'talkface.log', '.talkface.lock'}


TIMINGS = {'seconds', 'detect_s', 'split_s', 'measure_s'}   # how long a step took: differs from run to run


def _stable(o, root: str):
    "A JSON value without timings, and with the output root's path written as <root>."
    if isinstance(o, dict):
        return {k: _stable(v, root) for k, v in o.items()
                if k not in TIMINGS and not (k == 'fps' and 'seconds' in o)}   # landmarks' fps is a throughput
    if isinstance(o, list): return [_stable(v, root) for v in o]
    if isinstance(o, str): return o.replace(root, '<root>')
    return o


def _digest(p: Path, root: Path) -> str:
    if p.suffix == '.json':   # a record: compared without timings, and without where the root happens to be
        data = json.loads(p.read_text(encoding='utf-8'))
        return hashlib.sha256(json.dumps(_stable(data, str(root.resolve())), sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict:
    "sha256 of every output file under root, by relative path (the run's own records excluded; JSON records without timings)."
    root = Path(root)
    return {str(p.relative_to(root)): _digest(p, root)
            for p in sorted(root.rglob('*')) if p.is_file() and p.name not in IGNORED and not p.name.startswith('report')
            and 'report_files' not in p.parts}


def make_inputs(d: Path, copies: int = 1) -> Path:
    "A folder with `copies` copies of the ground-truth sample."
    src = demo_sample()
    inp = d / 'input'; inp.mkdir(parents=True, exist_ok=True)
    for i in range(copies): shutil.copy2(src, inp / f'sample{i}.mp4')
    return inp



@pytest.fixture(scope='session')
def reference(tmp_path_factory):
    "One uninterrupted run over two copies of the sample, with the local engine and 2 workers."
    d = tmp_path_factory.mktemp('ref')
    inp = make_inputs(d, 2)
    m = run_pipeline(RunConfig(input=str(inp), output=str(d / 'out'), stages=STAGES, workers=2))
    return inp, d / 'out', m.counts()


@pytest.fixture(scope='session')
def handoff_root(tmp_path_factory):
    """The training hand-off's root: the whole pipeline over the sample, the real HDTF clip (when present) and a corrupt
    file, then the identity stage, and a tiny random HuBERT's 50 Hz features. Tests that change it work on a copy."""
    from talkface.audio import AudioConfig, audio_clip, make_random_model
    from talkface.core import Layout
    from talkface.identity import identity_root
    from talkface.media import real_sample
    d = tmp_path_factory.mktemp('handoff')
    inp = d / 'input'; inp.mkdir()
    for p in [demo_sample()] + ([real_sample()] if real_sample() else []): shutil.copy2(p, inp / p.name)
    (inp / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 40)   # fails at scenes
    root = d / 'root'
    run_pipeline(RunConfig(input=str(inp), output=str(root), workers=2)).close()
    identity_root(root)
    hub = make_random_model('hubert', d / 'hubert')
    for p in sorted(Layout(root).dir('videos_25fps').glob('*.mp4')):
        audio_clip(p.stem, Layout(root), AudioConfig(features=('hubert',), model_path=str(hub), computed_device='cpu'))
    return inp, root
