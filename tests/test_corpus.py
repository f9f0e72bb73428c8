"""The bad-input corpus through the real `talkface run`: every file gets the row its `.expect.json` states,
a reason a person understands, no traceback, and no output where a stage did not succeed."""
import re, shutil, subprocess
from pathlib import Path
import pytest
from talkface.core import Layout, Manifest, clip_id, discover, is_complete, made_clips, stage_order
from talkface.sample import BAD_INPUTS, demo_sample, load_expectations, make_bad_inputs
from conftest import BIN

ORDER = [s.name for s in stage_order()]
STAGE_DIRS = {s.name: list(s.outputs) for s in stage_order()}   # the layout folders each stage writes into, as it declares them
GOOD = ('good_a.mp4', 'good_b.mp4')


def downstream(stage: str) -> list[str]:
    "`stage` and every stage that needs it, directly or through others (the stages are a tree: sync does not need pose)."
    out = [stage]
    for s in stage_order():
        if s.name not in out and any(a in out for a in s.after): out.append(s.name)
    return out

RAW_ERROR = re.compile(r'Traceback|Errno|\b[A-Z][A-Za-z]*(Error|Exception)\b|unexpected |File "')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "The corpus plus two good clips in one folder, one `talkface run` over it, and `talkface status --clips`."
    d = tmp_path_factory.mktemp('corpus')
    inp = d / 'input'
    make_bad_inputs(inp)
    for name in GOOD: shutil.copy2(demo_sample(), inp / name)
    out = d / 'out'
    run = subprocess.run([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--workers', '2'],
                         capture_output=True, text=True, timeout=1800)
    status = subprocess.run([str(BIN / 'talkface'), 'status', str(out), '--clips'], capture_output=True, text=True, timeout=120)
    m = Manifest(out)
    rows = m.rows(); m.close()
    by = {}
    for r in rows: by.setdefault(r['clip'], {})[r['stage']] = r
    ids = {p.name: cid for cid, p in discover(inp).items()}
    return dict(inp=inp, out=out, run=run, status=status, rows=rows, by=by, ids=ids, expect=load_expectations(inp))


def scene_clips(c, cid) -> list[str]:
    "The clips the scenes stage made from input `cid` (a fused run names them in its row, a split writes a file each)."
    r = c['by'][cid]['scenes']
    return made_clips(r['figures'], r['outputs'])


def stop(c, clip) -> tuple[str, str, str]:
    "(stage, status, reason) where `clip` stopped: its first stage that is not ok; ('none', 'ok', '') when all are ok."
    rows = c['by'].get(clip, {})
    for st in ORDER[1:]:
        r = rows.get(st)
        if r is None: return st, 'missing', ''
        if r['status'] != 'ok': return st, r['status'], r['reason']
    return 'none', 'ok', ''


def outcomes(c, name) -> list[tuple[str, str, str]]:
    "What happened to input file `name`: one (stage, status, reason) for a scenes failure, else one per scene clip."
    r = c['by'][c['ids'][name]]['scenes']
    if r['status'] != 'ok': return [('scenes', r['status'], r['reason'])]
    return [stop(c, k) for k in scene_clips(c, c['ids'][name])] or [('scenes', 'ok-but-empty', '')]


def test_the_run_completes_without_tracebacks(corpus):
    r = corpus['run']
    assert r.returncode == 1, r.stderr[-3000:]                       # some inputs fail (that is the corpus): the run says so
    for text in (r.stdout, r.stderr, corpus['status'].stdout, corpus['status'].stderr):
        assert 'Traceback' not in text, text[-3000:]
    assert corpus['status'].returncode == 0
    assert len(corpus['expect']) == len(BAD_INPUTS) >= 29


def test_good_clips_produce_full_outputs(corpus):
    lay = Layout(corpus['out'])
    for name in GOOD:
        kids = scene_clips(corpus, corpus['ids'][name])
        assert len(kids) == 2, (name, kids)              # the sample has one cut
        for k in kids:
            assert stop(corpus, k) == ('none', 'ok', ''), (k, stop(corpus, k))
            for st in ORDER[1:]:
                outs = corpus['by'][k][st]['outputs']
                assert all(is_complete(o) for o in outs), (k, st, outs)
            n = len(list(lay.path('frames', k).glob('*.png')))
            assert n > 50 and (lay.path('frames', k) / '000001.png').exists()
            for kind, suf in (('videos_25fps', '.mp4'), ('audios_16k', '.wav'), ('landmarks', '.txt'), ('landmarks', '.npy'),
                              ('pose_data', '.npy'), ('mfcc', '.npy'), ('sync', '.json'), ('identity', '.json'),
                              ('identity', '.npy')):
                assert is_complete(lay.path(kind, k, suf)), (k, kind)
            assert is_complete(lay.path('aus', k) / f'{k}.csv')


@pytest.mark.parametrize('name', [b[0] for b in BAD_INPUTS])
def test_every_bad_file_gets_its_expected_row(corpus, name):
    e = corpus['expect'][name]['expect']
    cid = corpus['ids'][name]
    assert 'scenes' in corpus['by'][cid], f'{name}: no manifest row'
    got = outcomes(corpus, name)
    want_stage = e['stage']
    for stage, status, reason in got:
        assert (stage, status) == (want_stage, e['status']), f"{name}: expected {e['status']} at {want_stage}, got {got}"
        if status == 'ok': continue
        assert e['reason_contains'].lower() in reason.lower(), (name, reason)
        assert Path(name).stem in reason or cid in reason, f'{name}: the reason does not name the file: {reason}'
        assert not RAW_ERROR.search(reason), f'{name}: raw exception text in the reason: {reason}'


def test_status_prints_one_line_per_input_file(corpus):
    text = corpus['status'].stdout
    assert '\ninput clip ' in text, text
    lines = [l for l in text.split('\ninput clip ', 1)[1].splitlines()[1:] if l.strip()]
    # every file under --input gets a line (issue 18, class 4): the corpus's own .expect.json records too, skipped as not a video
    records = {clip_id(p) for p in corpus['inp'].glob('*.expect.json')}
    mine = [l for l in lines if any(re.match(rf'{re.escape(r)}\s+scenes\s+skipped\s+not a video', l) for r in records)]
    assert len(mine) == len(records) == len(BAD_INPUTS), '\n'.join(lines)
    lines = [l for l in lines if l not in mine]
    assert len(lines) == len(corpus['ids']) == len(BAD_INPUTS) + len(GOOD), '\n'.join(lines)
    for name, cid in corpus['ids'].items():
        hits = [l for l in lines if re.match(rf'{re.escape(cid)}\s+\S+\s+\S+', l)]
        assert len(hits) == 1, (cid, hits)
        stage, status = re.match(rf'{re.escape(cid)}\s+(\S+)\s+(\S+)', hits[0]).groups()
        if name in GOOD: assert (stage, status) == (ORDER[-1], 'ok'), hits[0]; continue
        e = corpus['expect'][name]['expect']
        assert status == e['status'], hits[0]
        assert stage == (ORDER[-1] if e['status'] == 'ok' else e['stage']), hits[0]
        if status != 'ok': assert e['reason_contains'].lower() in hits[0].lower(), hits[0]


def test_no_output_where_a_stage_did_not_succeed(corpus):
    lay, by = Layout(corpus['out']), corpus['by']
    mine = lambda p, c: p.name == c or p.name.startswith(c + '.') or p.name.startswith(c + '-Scene-')
    for clip, rows in by.items():
        bad = [st for st, r in rows.items() if r['status'] != 'ok']
        for st in bad:   # the failed/skipped stage and every stage that needs it
            for later in downstream(st):
                for kind in STAGE_DIRS[later]:
                    d = lay.dir(kind)
                    stray = [p.name for p in d.iterdir() if mine(p, clip)] if d.exists() else []
                    assert not stray, f'{clip}: {st} is {rows[st]["status"]} but {kind}/ holds {stray}'
    # and the other way round: every file in the layout is a recorded output of an ok row (or a scenes record)
    outs = {Path(o) for r in corpus['rows'] if r['status'] == 'ok' for o in r['outputs']}
    scenes_ok = {c for c, rows in by.items() if rows.get('scenes', {}).get('status') == 'ok'}
    for f in corpus['out'].rglob('*'):
        if not f.is_file() or f.parent == corpus['out']: continue
        if f in outs or any(p in outs for p in f.parents): continue
        assert f.name.endswith('.scenes.json') and f.name[:-len('.scenes.json')] in scenes_ok, f'stray file {f}'
    assert not [p for p in corpus['out'].rglob('*') if '.tmp-' in p.name]
