"Shared fixtures: one uninterrupted pipeline run over the ground-truth sample, reused by several test files."
import hashlib, shutil, sys
from pathlib import Path
import pytest
from talkface.pipeline import RunConfig, run_pipeline
from talkface.sample import demo_sample

BIN = Path(sys.executable).parent
STAGES = 'scenes,filter,crop,convert,landmarks,pose,aus,audio'
IGNORED = {'manifest.sqlite', 'manifest.sqlite-wal', 'manifest.sqlite-shm', 'talkface.log', '.talkface.lock'}


def tree_hashes(root: Path) -> dict:
    "sha256 of every output file under root, by relative path (the run's own records excluded)."
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
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
