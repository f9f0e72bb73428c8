"""Issue 18: what an adversarial batch of real-world files and faults must not break. One test (or a few) per class:
a native crash in one file, byte names, aliasing, files dropped silently, changed settings, the root as its own input,
a damaged manifest, markup in names, non-square pixels, bad settings, damaged outputs, orphan workers, read-only roots,
Ctrl-C, long names, data quality (interlace, still pictures, two audio tracks) and small things.

Black-box: the real `talkface` command and the public `talkface.core` API. Inputs are tiny (about 2 s) and made with
the project's ffmpeg; most runs stop after the filter stage."""
import json, os, re, shutil, signal, sqlite3, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import pytest
from talkface.core import Layout, Manifest
from talkface.media import ffmpeg_exe
from talkface.sample import demo_sample
from conftest import BIN, tree_hashes

QUICK = 'scenes,filter'
FAST = 'scenes,filter,crop,convert'
TRACEBACK = re.compile(r'Traceback|KeyboardInterrupt|File "/')


def talkface(*args, env=None, **kw) -> subprocess.CompletedProcess:
    "Run the real `talkface` command (arguments may be bytes: file names that are not UTF-8)."
    args = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run([str(BIN / 'talkface'), *args], capture_output=True, text=True, errors='backslashreplace',
                          env=env, **{'timeout': 600, **kw})


def ff(*args):
    "Run the project's ffmpeg (never a shell)."
    args = [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run([ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', '-y', *args], capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors='replace')[-2000:]


def rows(root) -> dict:
    "{(clip, stage): row} of a root's manifest."
    m = Manifest(root)
    try: return {(r['clip'], r['stage']): r for r in m.rows()}
    finally: m.close()


def clip_lines(text: str) -> list[dict]:
    "The per-input table of `talkface status --clips`: [{clip, stage, status, reason, line}]."
    lines = text.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith('input clip'))
    head = lines[at]
    cs, cst, cr = head.index(' stage') + 1, head.index(' status') + 1, head.index(' reason') + 1
    return [dict(clip=l[:cs].rstrip(), stage=l[cs:cst].strip(), status=l[cst:cr].strip(), reason=l[cr:], line=l)
            for l in lines[at + 1:] if l.strip()]


def status_clips(root) -> list[dict]:
    r = talkface('status', root, '--clips')
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stdout + r.stderr
    return clip_lines(r.stdout)


def descendants(pid: int) -> set[int]:
    "Every living process below `pid` (from /proc)."
    kids = {}
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try: ppid = int((d / 'stat').read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out: out.add(k); todo.append(k)
    return out


def alive(pid: int) -> bool:
    "True while `pid` runs (a zombie has finished)."
    try: return (Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]) != 'Z'
    except OSError: return False


def end_all(pids):
    "Kill what a test started and may have left behind, by pid (so that a failing test leaves nothing running)."
    for p in pids:
        try: os.kill(p, signal.SIGKILL)
        except OSError: pass


@pytest.fixture(scope='module')
def talk(tmp_path_factory) -> Path:
    "A 2.2 s one-shot talking clip cut from the ground-truth sample (one scene, quick to process)."
    d = tmp_path_factory.mktemp('talk')
    ff('-ss', 1.0, '-t', 2.2, '-i', demo_sample(), '-c:v', 'libx264', '-preset', 'veryfast', '-crf', 23, '-c:a', 'aac',
       d / 'talk.mp4')
    return d / 'talk.mp4'


def folder(base: Path, files: dict) -> Path:
    "A folder holding `files` ({relative name (str or bytes): source file}), made under `base`."
    base.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dest = os.path.join(os.fsencode(base), name if isinstance(name, bytes) else os.fsencode(name))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(src, dest)
    return base


# -- 1. a native crash while reading one file ---------------------------------------------------------------------------
# A file that crashes the decoding library cannot be made on purpose with every build of PyAV (the 8-channel PCM .mov of
# the issue crashes some builds only), so a `sitecustomize` makes PyAV abort, as a double free does, on chosen names:
# CRASHREAD whenever the file is opened, CRASHLATE only where a later stage opens its clip in raw_data/.
HOOK = '''
import os, av
_open = av.open
def _crashing_open(file, *a, **k):
    s = os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ''
    if 'CRASHREAD' in s or ('CRASHLATE' in s and '/raw_data/' in s): os.abort()
    return _open(file, *a, **k)
av.open = _crashing_open
'''


@pytest.fixture(scope='module')
def crash_env(tmp_path_factory):
    d = tmp_path_factory.mktemp('hook')
    (d / 'sitecustomize.py').write_text(HOOK)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(d), *filter(None, [os.environ.get('PYTHONPATH')])]))


def pcm8_mov(dest: Path):
    "The issue's file: H.264 and 8 channels of PCM in a .mov."
    ff('-f', 'lavfi', '-i', 'testsrc2=s=320x240:r=25:d=1', '-f', 'lavfi', '-i', 'sine=f=300:d=1', '-ac', 8,
       '-c:v', 'libx264', '-c:a', 'pcm_s16le', dest)


@pytest.mark.parametrize('workers', [1, 2])
def test_a_file_that_crashes_the_reader_is_recorded_and_the_batch_goes_on(talk, crash_env, tmp_path, workers):
    inp = folder(tmp_path / 'in', {'good.mp4': talk, 'x_CRASHREAD.mov': talk, 'good2.mp4': talk})
    pcm8_mov(inp / 'pcm8.mov')
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', workers, env=crash_env)
    assert r.returncode == 1, r.stderr[-3000:]                               # the house's exit rule: 1 when a clip failed
    assert not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-3000:]
    got = rows(out)
    bad = got[('x_CRASHREAD', 'scenes')]
    assert bad['status'] == 'failed', bad
    assert 'x_CRASHREAD.mov' in bad['reason'] and 'crashed while reading' in bad['reason'] and 'signal 6' in bad['reason'], bad
    for good in ('good', 'good2'):
        assert got[(f'{good}-Scene-001', 'filter')]['status'] == 'ok', got
    assert got[('pcm8', 'scenes')]['status'] == 'ok'                # the real 8-channel file is read, wherever that is safe
    lines = {l['clip']: l for l in status_clips(out)}
    assert lines['x_CRASHREAD']['status'] == 'failed' and 'crashed while reading' in lines['x_CRASHREAD']['reason']
    # a rerun neither dies on the file nor tries it again; --retry-failed tries it again and records it again
    r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', workers, env=crash_env)
    assert r.returncode == 1 and rows(out)[('x_CRASHREAD', 'scenes')]['updated'] == bad['updated'], r.stderr[-2000:]
    r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', workers, '--retry-failed', env=crash_env)
    assert r.returncode == 1 and 'crashed while reading' in rows(out)[('x_CRASHREAD', 'scenes')]['reason'], r.stderr[-2000:]


def test_a_worker_dying_mid_task_loses_only_its_own_clip(talk, crash_env, tmp_path):
    "A crash in a later stage, in a pool worker, while other clips are queued and running: only the culprit fails."
    inp = folder(tmp_path / 'in', {**{f'ok{i}.mp4': talk for i in range(4)}, 'y_CRASHLATE.mp4': talk})
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', 'scenes,filter,crop', '--workers', 2, '--keep', 'scenes',
                 env=crash_env)                                                 # kept clips in raw_data/, where crop opens them
    assert r.returncode == 1, r.stderr[-3000:]
    got = rows(out)
    culprit = got[('y_CRASHLATE-Scene-001', 'crop')]
    assert culprit['status'] == 'failed' and 'crashed' in culprit['reason'] and 'signal 6' in culprit['reason'], culprit
    for i in range(4):
        assert got[(f'ok{i}-Scene-001', 'crop')]['status'] == 'ok', got[(f'ok{i}-Scene-001', 'crop')]


# -- 2. file names that are not UTF-8 -------------------------------------------------------------------------------------

def test_byte_names_work_end_to_end(talk, tmp_path):
    inp = folder(tmp_path / 'in', {b'bad\xff\xfe.mp4': talk, b'caf\xe9.mp4': talk, 'plain.mp4': talk})
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1)
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-3000:]
    lines = status_clips(out)
    assert len(lines) == 3, lines
    shown = {l['clip']: l for l in lines}
    assert {'bad\\xff\\xfe', 'caf\\xe9', 'plain'} <= set(shown), lines          # the bytes shown as Python writes them
    assert {l['status'] for l in lines} == {'ok'}, lines
    r = talkface('report', out)
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-3000:]
    assert 'bad\\xff\\xfe' in (out / 'report.html').read_text(encoding='utf-8')
    # the manifest keeps the real file: its source is the faithful spelling of the name
    srcs = [r['source'] for r in rows(out).values()]
    assert any(s.endswith('bad\\xff\\xfe.mp4') for s in srcs), srcs


# -- 3. outputs never alias an input; a changed input is noticed ----------------------------------------------------------

def test_outputs_never_share_the_inputs_inode_and_editing_them_leaves_the_input_alone(talk, tmp_path):
    inp = folder(tmp_path / 'in', {'a.mp4': talk})
    src = inp / 'a.mp4'
    before = src.read_bytes()
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1, '--keep', 'scenes')
    assert r.returncode == 0, r.stderr[-2000:]
    ino = src.stat().st_ino
    assert not [p for p in out.rglob('*') if p.is_file() and p.stat().st_ino == ino]
    for p in (out / 'raw_data' / 'a-Scene-001.mp4', out / 'scenes' / 'a-Scene-001.mp4'):
        with open(p, 'r+b') as f: f.write(b'\0' * 64)                          # edit the dataset in place
    assert src.read_bytes() == before and src.stat().st_nlink == 1


def test_an_input_replaced_in_place_is_noticed_and_its_clips_redone(talk, tmp_path):
    inp = folder(tmp_path / 'in', {'a.mp4': talk})
    src, out = inp / 'a.mp4', tmp_path / 'out'
    args = ('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1)
    assert talkface(*args).returncode == 0
    old = (out / 'specified_formats/videos/videos_25fps/a-Scene-001.mp4').read_bytes()
    st = src.stat()
    ff('-i', talk, '-vf', 'hflip', '-c:v', 'libx264', '-preset', 'veryfast', '-crf', 23, '-c:a', 'copy', tmp_path / 'b.mp4')
    shutil.copyfile(tmp_path / 'b.mp4', src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))                       # same name, same mtime: only the bytes changed
    r = talkface(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    new = (out / 'specified_formats/videos/videos_25fps/a-Scene-001.mp4').read_bytes()
    assert new != old, 'the replaced input was not noticed: the dataset still holds the old video'
    # and the dataset is now what a fresh run over the new file gives
    fresh = tmp_path / 'fresh'
    assert talkface('run', '--input', inp, '--output', fresh, '--stages', FAST, '--frames', 'none', '--workers', 1).returncode == 0
    assert tree_hashes(out) == tree_hashes(fresh)



def test_an_input_replaced_by_one_with_fewer_scenes_leaves_none_of_its_old_clips(talk, tmp_path):
    inp = folder(tmp_path / 'in', {'a.mp4': demo_sample()})                 # two shots: two scene clips
    out = tmp_path / 'out'
    args = ('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1)
    assert talkface(*args).returncode == 0
    assert {c for c, _ in rows(out)} == {'a', 'a-Scene-001', 'a-Scene-002'}
    shutil.copyfile(talk, inp / 'a.mp4')                                     # replaced by a one-shot video
    r = talkface(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = tmp_path / 'fresh'
    assert talkface('run', '--input', inp, '--output', fresh, '--stages', FAST, '--frames', 'none', '--workers', 1).returncode == 0
    assert set(rows(out)) == set(rows(fresh)) and tree_hashes(out) == tree_hashes(fresh)

# -- 4. every file under --input gets a line ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def containers(talk, tmp_path_factory):
    "One second of the talking clip in each container the issue lists, each under a video-less extension's name too."
    d = tmp_path_factory.mktemp('containers')
    h264 = ['-c:v', 'libx264', '-preset', 'veryfast', '-crf', 28, '-pix_fmt', 'yuv420p']
    made = {'clip.ts': [*h264, '-c:a', 'aac', '-f', 'mpegts'], 'clip.mts': [*h264, '-c:a', 'aac', '-f', 'mpegts'],
            'clip.m4v': [*h264, '-c:a', 'aac', '-f', 'mp4'], 'clip.flv': [*h264, '-c:a', 'aac', '-f', 'flv'],
            'clip.mpg': ['-c:v', 'mpeg2video', '-q:v', 4, '-c:a', 'mp2', '-f', 'mpeg'],
            'clip.3gp': [*h264, '-s', '352x288', '-c:a', 'aac', '-ar', 16000, '-ac', 1, '-f', '3gp'],
            'clip.video': [*h264, '-c:a', 'aac', '-f', 'matroska']}           # any extension: what ffmpeg reads is what counts
    for name, args in made.items(): ff('-t', 1.0, '-i', talk, *args, d / name)
    return d


def test_every_file_under_the_input_gets_a_line(talk, containers, tmp_path):
    inp = tmp_path / 'in'
    folder(inp, {f'c{p.suffix.replace(".", "_")}{p.suffix}': p for p in containers.iterdir()})
    folder(inp, {'top.mp4': talk, 'deep/er/nested.mp4': talk, 'one/same.mp4': talk, 'two/same.mp4': talk,
                 '.hidden.mp4': talk, 'dir.mp4/inside.mp4': talk})
    (inp / 'notes.txt').write_text('not a video\n')
    (inp / 'gone.mp4').symlink_to(tmp_path / 'nowhere.mp4')
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', 'scenes', '--workers', 1)
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-3000:]
    lines = status_clips(out)
    ids = [l['clip'] for l in lines]
    assert len(ids) == len(set(ids)) == 7 + 6 + 2 + 1, lines                 # one line per file (and one for dir.mp4/)
    by = lambda *words: [l for l in lines if all(w in l['clip'] for w in words)]
    for ext in ('ts', 'mts', 'm4v', 'flv', 'mpg', '3gp', 'video'):
        [l] = by(f'c_{ext}')
        assert (l['stage'], l['status']) == ('scenes', 'ok'), l
    for words in (('top',), ('deep', 'nested'), ('one', 'same'), ('two', 'same'), ('dir', 'inside')):
        [l] = by(*words)
        assert l['status'] == 'ok', l
    for words, why in ((('notes',), 'not a video'), (('hidden',), 'hidden'), (('gone',), 'broken link'),
                       (('dir',), 'folder')):
        hits = [l for l in by(*words) if 'inside' not in l['clip']]
        assert len(hits) == 1 and hits[0]['status'] == 'skipped' and why in hits[0]['reason'], (words, hits)


# -- 5. changed settings, --redo, --overwrite -----------------------------------------------------------------------------

def test_a_changed_setting_stops_at_once_and_redo_applies_it_to_every_clip(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    base = ('run', '--input', inp, '--output', out, '--stages', 'scenes,filter,crop', '--workers', 1)
    assert talkface(*base, '--expanded_ratio', 0.6).returncode == 0
    before = rows(out)
    folder(inp, {'b.mp4': talk})                                             # a new input in the same rerun
    r = talkface(*base, '--expanded_ratio', 0.8)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert 'expanded_ratio' in err and '0.6' in err and '0.8' in err and '--redo crop' in err, err
    assert not TRACEBACK.search(err) and len(err.splitlines()) == 1, err
    assert rows(out) == before                                                # nothing was done
    r = talkface(*base, '--expanded_ratio', 0.8, '--redo', 'crop')
    assert r.returncode == 0, r.stderr[-2000:]
    after = rows(out)
    side = {c: after[(c, 'crop')]['figures']['side'] for c in ('a-Scene-001', 'b-Scene-001')}
    assert side['a-Scene-001'] == side['b-Scene-001'] != before[('a-Scene-001', 'crop')]['figures']['side'], side
    assert after[('a-Scene-001', 'filter')]['updated'] == before[('a-Scene-001', 'filter')]['updated']   # upstream kept
    # the same settings again: nothing to do, nothing redone
    r = talkface(*base, '--expanded_ratio', 0.8)
    assert r.returncode == 0 and rows(out) == after, r.stderr[-2000:]


def test_a_changed_setting_in_a_config_file_is_caught_too(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    base = ('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1)
    assert talkface(*base).returncode == 0
    (tmp_path / 'c.yaml').write_text('filter:\n  min_speech_ratio: 0.5\n')
    r = talkface(*base, '--config', tmp_path / 'c.yaml')
    assert r.returncode == 2 and 'min_speech_ratio' in r.stderr and '--redo filter' in r.stderr, r.stderr[-2000:]



def test_redo_leaves_nothing_made_from_the_old_settings(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    base = ('run', '--input', inp, '--output', out, '--frames', 'none', '--workers', 1)
    assert talkface(*base, '--stages', FAST).returncode == 0
    # the stages after a redone one that this run does not run: forgotten, a later run makes them again
    r = talkface(*base, '--stages', 'scenes,filter,crop', '--expanded_ratio', 0.8, '--redo', 'crop')
    assert r.returncode == 0, r.stderr[-2000:]
    video = out / 'specified_formats/videos/videos_25fps/a-Scene-001.mp4'
    assert ('a-Scene-001', 'convert') not in rows(out) and not video.exists()
    assert talkface(*base, '--stages', FAST, '--expanded_ratio', 0.8).returncode == 0
    assert rows(out)[('a-Scene-001', 'convert')]['status'] == 'ok' and video.exists()
    # a redone stage that now drops the clip: nothing after it is left from before
    r = talkface(*base, '--stages', FAST, '--expanded_ratio', 0.8, '--min_duration', 3, '--redo', 'filter')
    assert r.returncode == 0 and rows(out)[('a-Scene-001', 'filter')]['status'] == 'skipped', r.stderr[-2000:]
    fresh = tmp_path / 'fresh3'
    assert talkface('run', '--input', inp, '--output', fresh, '--frames', 'none', '--workers', 1, '--stages', FAST,
                    '--expanded_ratio', 0.8, '--min_duration', 3).returncode == 0
    assert set(rows(out)) == set(rows(fresh)) and tree_hashes(out) == tree_hashes(fresh)

def test_overwrite_true_redoes_every_selected_stage(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    base = ('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1)
    assert talkface(*base).returncode == 0
    before, hashes = rows(out), tree_hashes(out)
    r = talkface(*base, '--overwrite', 'True')
    assert r.returncode == 0, r.stderr[-2000:]
    after = rows(out)
    assert set(after) == set(before) and all(after[k]['updated'] > before[k]['updated'] for k in before)
    assert tree_hashes(out) == hashes


# -- 6. the project's own outputs as input ---------------------------------------------------------------------------------

def test_the_output_root_as_input_is_refused_or_deduped(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'good.mp4': talk}), tmp_path / 'out'
    assert talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1).returncode == 0
    clips = {c for c, _ in rows(out)}
    for again in (out / 'raw_data', out / 'scenes', out, out / 'raw_data' / 'good-Scene-001.mp4'):
        for _ in range(2):
            r = talkface('run', '--input', again, '--output', out, '--stages', QUICK, '--workers', 1)
            assert not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-2000:]
            assert r.returncode in (0, 2), r.stderr[-2000:]
            if r.returncode: assert 'output' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert {c for c, _ in rows(out)} == clips
    assert not list(out.rglob('*-Scene-001-Scene-*'))


def test_an_output_root_inside_the_input_folder_is_not_walked(talk, tmp_path):
    inp = folder(tmp_path / 'videos', {'good.mp4': talk})
    out = inp / 'dataset'
    for _ in range(2):
        r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1)
        assert r.returncode == 0, r.stderr[-2000:]
    assert {c for c, _ in rows(out)} == {'good', 'good-Scene-001'}
    assert len(status_clips(out)) == 1


# -- 7. a damaged manifest -------------------------------------------------------------------------------------------------

def test_a_damaged_manifest_is_rebuilt_from_the_records_on_disk(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk, 'b.mp4': talk}), tmp_path / 'out'
    args = ('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1)
    assert talkface(*args).returncode == 0
    want, hashes = {k: (r['status'], r['reason']) for k, r in rows(out).items()}, tree_hashes(out)
    updated = {k: r['updated'] for k, r in rows(out).items()}
    m = out / 'manifest.sqlite'
    with open(m, 'r+b') as f: f.truncate(5000)
    r = talkface('status', out, '--clips')
    assert not TRACEBACK.search(r.stdout + r.stderr), r.stdout + r.stderr
    assert r.returncode in (0, 1) and 'manifest' in (r.stdout + r.stderr), r.stdout + r.stderr
    r = talkface(*args)
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-2000:]
    aside = [p for p in out.iterdir() if p.name.startswith('manifest.sqlite') and 'damaged' in p.name]
    assert aside and aside[0].stat().st_size == 5000, list(out.iterdir())
    got = rows(out)
    assert {k: (r['status'], r['reason']) for k, r in got.items()} == want
    assert {k: r['updated'] for k, r in got.items()} == updated                 # rebuilt, nothing redone
    assert tree_hashes(out) == hashes
    assert len(status_clips(out)) == 2


# -- 8. markup in a file name ----------------------------------------------------------------------------------------------

MARKUP = ['<img src=x onerror=alert(1)>.mp4', 'a&b "c" <i>.mp4', 'm$\\bad{$x.mp4', "t<script>alert('x')<\\script>.mp4"]


def test_markup_in_names_is_escaped_in_the_report(talk, tmp_path):
    inp = folder(tmp_path / 'in', {n: talk for n in MARKUP})
    (inp / '<b onclick=x>broken.mp4').write_bytes(b'\0' * 5000)             # a failure whose reason names the file
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', 'scenes,filter,crop,convert,landmarks',
                 '--frames', 'none', '--workers', 1)
    assert r.returncode == 1, r.stderr[-3000:]                               # broken.mp4 failed
    r = talkface('report', out)
    assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), r.stderr[-3000:]
    page = (out / 'report.html').read_text(encoding='utf-8')
    for raw in ('<img src=x', '<i>', '<script>', '<b onclick'):
        assert raw not in page, raw
    assert '&lt;b onclick=x&gt;broken' in page and '&lt;img src=x onerror=alert(1)&gt;' in page
    md = (out / 'report.md').read_text(encoding='utf-8')
    assert '<img src=x' not in md and '<script>' not in md


# -- 9. non-square pixels --------------------------------------------------------------------------------------------------

def middle_frame(video: Path) -> np.ndarray:
    "Frame 10 of a video, gray, 96 x 96, normalised (zero mean, unit variance)."
    import av, cv2
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == 10: break
    g = cv2.resize(f.to_ndarray(format='gray'), (96, 96), interpolation=cv2.INTER_AREA).astype(np.float64)
    return (g - g.mean()) / g.std()


@pytest.mark.parametrize('sar,size', [('64/45', '720x576'), ('8/9', '720x480')])
def test_non_square_pixels_are_made_square_before_the_crop(talk, tmp_path, sar, size):
    "The same picture stored with non-square pixels and with square ones: the crops must show the same face."
    w, h = map(int, size.split('x'))
    num, den = map(int, sar.split('/'))
    disp = round(w * num / den / 2) * 2                                        # the width the picture is shown at
    # both at 25 fps: the square file is copied whole and the other split at 25 fps, and crop samples its faces by frame
    # index, so at another frame rate the two squares would be placed from faces of other instants (0.76, whatever the pixels)
    ff('-i', talk, '-vf', f'fps=25,scale={disp}:{h},setsar=1,scale={w}:{h},setsar={sar}', '-c:v', 'libx264', '-preset',
       'veryfast', '-crf', 20, '-c:a', 'copy', tmp_path / 'anamorphic.mp4')
    ff('-i', talk, '-vf', f'fps=25,scale={disp}:{h},setsar=1', '-c:v', 'libx264', '-preset', 'veryfast', '-crf', 20, '-c:a', 'copy',
       tmp_path / 'square.mp4')
    inp = folder(tmp_path / 'in', {'anamorphic.mp4': tmp_path / 'anamorphic.mp4', 'square.mp4': tmp_path / 'square.mp4'})
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    lay = Layout(out)
    a, s = (middle_frame(lay.path('videos_25fps', f'{n}-Scene-001', '.mp4')) for n in ('anamorphic', 'square'))
    assert (a * s).mean() > 0.9, (a * s).mean()                               # squashed faces correlate 0.4-0.75
    import av
    with av.open(str(lay.path('videos_25fps', 'anamorphic-Scene-001', '.mp4'))) as c:
        sar_out = c.streams.video[0].sample_aspect_ratio
    assert sar_out in (None, 1), sar_out


# -- 10. settings are checked before any work --------------------------------------------------------------------------------

BAD_SETTINGS = [
    (['--expanded_ratio', '-1'], 'expanded_ratio', '-1'),
    (['--fps', '0'], 'fps', '0'),
    (['--sample_rate', '0'], 'sample_rate', '0'),
    (['--preset', 'nonsense'], 'preset', 'nonsense'),
    (['--set', 'crop.skip_per_frame=0'], 'skip_per_frame', '0'),
    (['--set', 'filter.min_duration=-2'], 'min_duration', '-2'),
    (['--workers', '-3'], 'workers', '-3'),
    (['--config', 'CFG:crop:\n  expanded_ratio: "abc"\n'], 'expanded_ratio', 'abc'),
    (['--config', 'CFG:- crop\n- filter\n'], 'config', 'list'),
    (['--config', 'CFG:scenes:\n  detector: nope\n'], 'detector', 'nope'),
    (['--config', 'CFG:convert: 3\n'], 'convert', '3'),
]


@pytest.mark.parametrize('args,name,value', BAD_SETTINGS, ids=[b[1] + '=' + b[2] for b in BAD_SETTINGS])
def test_bad_settings_are_refused_before_any_work(talk, tmp_path, args, name, value):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    if args[0] == '--config':
        (tmp_path / 'c.yaml').write_text(args[1][4:])
        args = ['--config', tmp_path / 'c.yaml']
    r = talkface('run', '--input', inp, '--output', out, *args)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert not TRACEBACK.search(err) and len(err.splitlines()) == 1, err
    assert name in err and value in err, err
    assert not (out / 'manifest.sqlite').exists()


# -- 11. damaged outputs are noticed -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def converted(talk, tmp_path_factory):
    "One clean run to convert (with PNG frames), and its tree hashes."
    d = tmp_path_factory.mktemp('converted')
    inp = folder(d / 'in', {'a.mp4': talk})
    r = talkface('run', '--input', inp, '--output', d / 'out', '--stages', FAST, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(inp=inp, out=d / 'out', hashes=tree_hashes(d / 'out'))


def _cut_wav(lay):
    p = lay.path('audios_16k', 'a-Scene-001', '.wav'); p.write_bytes(p.read_bytes()[:-1280])   # one frame of audio less

def _cut_mp4(lay):
    p = lay.path('videos_25fps', 'a-Scene-001', '.mp4'); p.write_bytes(p.read_bytes()[:int(p.stat().st_size * 0.9)])

def _drop_pngs(lay):
    for p in sorted(lay.path('frames', 'a-Scene-001').glob('*.png'))[-32:]: p.unlink()


@pytest.mark.parametrize('damage', [_cut_wav, _cut_mp4, _drop_pngs], ids=['wav', 'mp4', 'png'])
def test_a_damaged_output_of_any_kind_is_redone(converted, damage):
    out = converted['out']
    damage(Layout(out))
    r = talkface('run', '--input', converted['inp'], '--output', out, '--stages', FAST, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_hashes(out) == converted['hashes']


# -- 12. workers die with the driver ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_driver_leaves_no_process_behind(talk, tmp_path, sig):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk, 'b.mp4': talk, 'c.mp4': talk}), tmp_path / 'out'
    proc = subprocess.Popen([str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out), '--stages', FAST,
                             '--workers', '2'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:                # wait for the workers to be busy
            seen |= descendants(proc.pid)
            if len(descendants(proc.pid)) >= 3 and (out / 'manifest.sqlite').exists(): break
            time.sleep(0.2)
        assert proc.poll() is None, 'the run ended before it could be killed'
        seen |= descendants(proc.pid)
        os.kill(proc.pid, sig); proc.wait(timeout=60)
        deadline = time.time() + 15
        while time.time() < deadline and [p for p in seen if alive(p)]: time.sleep(0.2)
        left = {p: Path(f'/proc/{p}/cmdline').read_bytes().replace(b'\0', b' ')[:120] for p in seen if alive(p)}
        assert not left, f'still running after the driver died: {left}'
    finally:
        end_all([proc.pid, *seen])


# -- 13. status and report on a read-only root ---------------------------------------------------------------------------------------

def _unprivileged() -> list[str]:
    "A command prefix that runs as user nobody (root ignores file permissions), or [] when we are not root."
    if os.geteuid() != 0: return []
    if not shutil.which('setpriv'): pytest.skip('running as root and setpriv is missing: cannot drop privileges')
    return ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']


def test_status_and_report_work_on_a_read_only_root(converted):
    cmd = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix='talkface-ro-')); base.chmod(0o755)
    try:
        ro = base / 'root'
        shutil.copytree(converted['out'], ro)
        home = base / 'home'; home.mkdir(); home.chmod(0o777)
        for p in [ro, *ro.rglob('*')]: p.chmod(0o555 if p.is_dir() else 0o444)
        env = dict(os.environ, HOME=str(home), TMPDIR=str(home))
        for args in (['status', ro], ['status', ro, '--clips'], ['report', ro]):
            r = subprocess.run([*cmd, str(BIN / 'talkface'), *map(str, args)], capture_output=True, text=True, timeout=300,
                               env=env, cwd=str(home))
            assert r.returncode == 0 and not TRACEBACK.search(r.stdout + r.stderr), (args, r.stdout[-1000:], r.stderr[-2000:])
            if args[0] == 'status': assert 'convert' in r.stdout
        html = [p for p in home.rglob('report.html')]
        assert html and 'talkface QC report' in html[0].read_text(encoding='utf-8'), r.stdout
        assert str(html[0]) in r.stdout                                     # it says where the report went
    finally:
        for p in [base, *base.rglob('*')]:
            try: p.chmod(0o755)
            except OSError: pass
        shutil.rmtree(base, ignore_errors=True)


# -- 14. Ctrl-C ------------------------------------------------------------------------------------------------------------------------

def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(converted, tmp_path):
    out = tmp_path / 'out'
    cmd = [str(BIN / 'talkface'), 'run', '--input', str(converted['inp']), '--output', str(out), '--stages', FAST,
           '--workers', '1']                                                  # as the reference (x264's bytes depend on its threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as from a terminal: a job started with & inherits Ctrl-C ignored
    seen = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            seen |= descendants(proc.pid)
            try:
                n = sqlite3.connect(out / 'manifest.sqlite').execute("SELECT COUNT(*) FROM results").fetchone()[0]   # the first row (scenes): filter, crop and convert still to run
            except sqlite3.Error: n = 0
            if n: break
            time.sleep(0.1)
        assert proc.poll() is None, 'the run ended before Ctrl-C'
        seen |= descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)                                     # what a terminal sends on Ctrl-C
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (proc.returncode, err[-2000:])
        assert not TRACEBACK.search(err), err
        last = [l for l in err.splitlines() if l.strip()]
        assert last and 'interrupted' in last[-1] and len([l for l in last if 'interrupted' in l]) == 1, err
        time.sleep(2)
        assert not [p for p in seen if alive(p)]
    finally:
        end_all([proc.pid, *seen])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_hashes(out) == converted['hashes']
    assert not [p for p in out.rglob('*') if '.tmp-' in p.name]


# -- 15. long names -------------------------------------------------------------------------------------------------------------------

LONG = ['a' * 246 + '.mp4', '語' * 74 + '.mp4', 'x' * 240 + 'one.mp4', 'x' * 240 + 'two.mp4']


def test_long_names_are_shortened_with_a_hash_and_kept_whole_in_the_manifest(talk, tmp_path):
    inp = folder(tmp_path / 'in', {n: talk for n in LONG})
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', FAST, '--workers', 1)
    assert r.returncode == 0 and 'too long' not in r.stdout + r.stderr, r.stderr[-3000:]
    got = rows(out)
    conv = [r for (c, st), r in got.items() if st == 'convert']
    assert len(conv) == 4 and {r['status'] for r in conv} == {'ok'}, conv
    for p in out.rglob('*'): assert len(os.fsencode(p.name)) <= 255, p.name
    srcs = {Path(r['source']).name for r in got.values()}
    assert set(LONG) <= srcs, srcs
    lines = status_clips(out)
    assert len({l['clip'] for l in lines}) == 4 and {l['status'] for l in lines} == {'ok'}, lines


# -- 16. data quality: interlace, still pictures, two audio tracks ---------------------------------------------------------------------

def comb(png_dir: Path) -> float:
    "Combing: the 99.5th percentile of (|line - next line| - |line - the line after next|), median over the frames."
    import cv2
    vals = []
    for p in sorted(png_dir.glob('*.png'))[::4]:
        y = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        vals.append(np.percentile(np.abs(y[:-1] - y[1:])[:-1] - np.abs(y[:-2] - y[2:]), 99.5))
    return float(np.median(vals))


def test_interlaced_video_is_deinterlaced(talk, tmp_path):
    src = tmp_path / 'src'; src.mkdir()
    fields = ['-vf', 'fps=50,scale=720:576,setsar=1,interlace=scan=tff,setfield=tff']
    h264 = ['-c:v', 'libx264', '-preset', 'veryfast', '-crf', 18, '-c:a', 'copy']
    ff('-i', talk, *fields, *h264, '-flags', '+ilme+ildct', src / 'flagged.mp4')     # the stream says it is interlaced
    ff('-i', talk, *fields[:1], fields[1][:-len(',setfield=tff')], *h264, src / 'combed.mp4')   # it does not say so
    ff('-i', talk, '-vf', 'fps=25,scale=720:576,setsar=1', *h264, src / 'progressive.mp4')
    inp = folder(tmp_path / 'in', {p.name: p for p in src.iterdir()})
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', FAST, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    lay = Layout(out)
    c = {n: comb(lay.path('frames', f'{n}-Scene-001')) for n in ('flagged', 'combed', 'progressive')}
    assert c['flagged'] < 2 * c['progressive'] + 2 and c['combed'] < 2 * c['progressive'] + 2, c


def test_a_still_picture_over_speech_is_dropped_as_static(talk, tmp_path):
    ff('-ss', 1.0, '-i', talk, '-frames:v', 1, tmp_path / 'photo.png')
    ff('-loop', 1, '-framerate', 25, '-i', tmp_path / 'photo.png', '-i', talk, '-map', '0:v', '-map', '1:a', '-t', 2.2,
       '-c:v', 'libx264', '-preset', 'veryfast', '-crf', 23, '-pix_fmt', 'yuv420p', '-c:a', 'copy', tmp_path / 'still.mp4')
    inp = folder(tmp_path / 'in', {'still.mp4': tmp_path / 'still.mp4', 'talk.mp4': talk})
    out = tmp_path / 'out'
    assert talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1).returncode == 0
    got = rows(out)
    still, moving = got[('still-Scene-001', 'filter')], got[('talk-Scene-001', 'filter')]
    assert still['status'] == 'skipped' and 'static' in still['reason'], still
    assert moving['status'] == 'ok', moving


@pytest.mark.parametrize('order', ['tone_first', 'speech_first'])
def test_with_two_audio_tracks_the_one_with_speech_is_used_and_recorded(talk, tmp_path, order):
    tone = ['-f', 'lavfi', '-t', 2.2, '-i', 'sine=f=440:r=44100']
    maps = ['-map', '0:v', '-map', '1:a', '-map', '0:a'] if order == 'tone_first' else ['-map', '0:v', '-map', '0:a', '-map', '1:a']
    ff('-i', talk, *tone, *maps, '-c:v', 'copy', '-c:a', 'aac', '-shortest', tmp_path / 'two.mp4')
    inp, out = folder(tmp_path / 'in', {'two.mp4': tmp_path / 'two.mp4'}), tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', FAST, '--frames', 'none', '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    got = rows(out)
    assert got[('two-Scene-001', 'filter')]['status'] == 'ok', got[('two-Scene-001', 'filter')]
    assert got[('two', 'scenes')]['figures'].get('audio_track') == (1 if order == 'tone_first' else 0), got[('two', 'scenes')]
    import soundfile as sf
    x, sr = sf.read(str(Layout(out).path('audios_16k', 'two-Scene-001', '.wav')))
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    assert spec[(f > 430) & (f < 450)].sum() / spec.sum() < 0.2                 # the speech, not the tone


# -- 17. small things --------------------------------------------------------------------------------------------------------------------

def test_onnxruntime_writes_no_telemetry(talk, tmp_path):
    home = tmp_path / 'home'; home.mkdir()
    inp = folder(tmp_path / 'in', {'a.mp4': talk})
    r = talkface('run', '--input', inp, '--output', tmp_path / 'out', '--stages', QUICK, '--workers', 1,
                 env=dict(os.environ, HOME=str(home)))
    assert r.returncode == 0 and rows(tmp_path / 'out')[('a-Scene-001', 'filter')]['status'] == 'ok', r.stderr[-2000:]
    assert not [p for p in home.rglob('*') if 'onnxruntime' in str(p).lower() or 'Microsoft' in str(p)], list(home.rglob('*'))


def test_status_after_scenes_alone_says_scenes_ok_not_pending(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk}), tmp_path / 'out'
    assert talkface('run', '--input', inp, '--output', out, '--stages', 'scenes', '--workers', 1).returncode == 0
    [l] = status_clips(out)
    assert (l['stage'], l['status']) == ('scenes', 'ok') and 'pending' not in l['line'], l


def test_an_input_named_like_a_scene_of_another_keeps_its_line(talk, tmp_path):
    inp, out = folder(tmp_path / 'in', {'a.mp4': talk, 'a-Scene-001.mp4': talk}), tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', QUICK, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = status_clips(out)
    assert len(lines) == 2 and {l['status'] for l in lines} == {'ok'} and {l['stage'] for l in lines} == {'filter'}, lines
    assert len({r['source'] for (c, st), r in rows(out).items() if st == 'scenes'}) == 2


def test_a_bit_flip_is_called_damage_not_an_error_page(talk, tmp_path):
    data = bytearray(talk.read_bytes()); data[3] ^= 1                          # the first box's size
    inp = tmp_path / 'in'; inp.mkdir()
    (inp / 'flipped.mp4').write_bytes(bytes(data))
    (inp / 'page.mp4').write_bytes(b'<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n' * 40)
    out = tmp_path / 'out'
    assert talkface('run', '--input', inp, '--output', out, '--stages', 'scenes', '--workers', 1).returncode == 1
    got = rows(out)
    flipped, page = got[('flipped', 'scenes')]['reason'], got[('page', 'scenes')]['reason']
    assert 'flipped.mp4' in flipped and 'not a readable media file' in flipped, flipped
    assert 'error page' not in flipped and 'partial download' not in flipped and 'damaged' in flipped, flipped
    assert 'not a readable media file' in page and ('HTML' in page or 'text' in page), page
