"""Faults a dataset build meets over days: a hung ffmpeg, corrupt intermediates, a read-only output, two runs on one
root, a full disk, hostile file names. Each ends in a clear message and loses nothing.
(SIGKILL mid-stage then a rerun is `test_pipeline.py::test_sigkill_then_rerun_gives_identical_outputs`.)"""
import os, re, resource, shutil, subprocess, tempfile, time
from pathlib import Path
import pytest
from talkface.core import Layout, Manifest, is_complete, package_dir
from talkface.media import ffmpeg_exe, ffpath, run_ffmpeg
from talkface.sample import demo_sample
from conftest import BIN, make_inputs, tree_hashes

FAST = 'scenes,filter,crop,convert,landmarks,audio'


def talkface(*args, **kw) -> subprocess.CompletedProcess:
    "Run the real `talkface` command."
    return subprocess.run([str(BIN / 'talkface'), *map(str, args)], capture_output=True, text=True, **{'timeout': 600, **kw})


def rows(root) -> dict:
    m = Manifest(root)
    try: return {(r['clip'], r['stage']): r for r in m.rows()}
    finally: m.close()


def no_half_files(root):
    "No temporary file anywhere, and every output the manifest records as ok is whole."
    assert not [p for p in Path(root).rglob('*') if '.tmp-' in p.name]
    for r in rows(root).values():
        if r['status'] == 'ok': assert all(is_complete(o) for o in r['outputs']), r


@pytest.fixture(scope='module')
def short_clip(tmp_path_factory) -> Path:
    "A 2.6 s one-shot talking clip cut from the sample (one scene: quick to process)."
    d = tmp_path_factory.mktemp('short')
    dest = d / 'talk.mp4'
    run_ffmpeg(['-ss', 1.0, '-t', 2.6, '-i', ffpath(demo_sample()), '-c:v', 'libx264', '-preset', 'veryfast', '-crf', 23,
                '-c:a', 'aac', ffpath(dest)], demo_sample())
    return dest


@pytest.fixture(scope='module')
def clean(short_clip, tmp_path_factory):
    "One uninterrupted run over the short clip: the outputs every fault test must end up with."
    d = tmp_path_factory.mktemp('clean')
    inp = d / 'input'; inp.mkdir(); shutil.copy2(short_clip, inp / 'talk.mp4')
    r = talkface('run', '--input', inp, '--output', d / 'out', '--stages', FAST, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    got = rows(d / 'out')
    assert {st: got[('talk-Scene-001', st)]['status'] for st in FAST.split(',')[1:]} == dict.fromkeys(FAST.split(',')[1:], 'ok')
    return dict(inp=inp, out=d / 'out', hashes=tree_hashes(d / 'out'))


# -- (b) a hung ffmpeg ----------------------------------------------------------------------------------------------

def test_hung_ffmpeg_is_stopped_by_the_timeout_and_recorded(tmp_path):
    # an ffmpeg, chosen with TALKFACE_FFMPEG, that hangs on any input file (it answers `-version` and PySceneDetect's probe at once)
    fake = tmp_path / 'bin'; fake.mkdir()
    pids = tmp_path / 'pids'
    (fake / 'ffmpeg').write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "-i" ] && echo $$ >> "{pids}" && exec sleep 317; done\n'
                                 'echo "ffmpeg version 9.0 (a stand-in that hangs)"\nexit 0\n')
    (fake / 'ffmpeg').chmod(0o755)
    inp = make_inputs(tmp_path, 1)                       # the 8 s sample: two shots, so scenes runs ffmpeg to split it
    env = dict(os.environ, TALKFACE_FFMPEG=str(fake / 'ffmpeg'), TALKFACE_FFMPEG_TIMEOUT='3')
    t0 = time.time()
    r = talkface('run', '--input', inp, '--output', tmp_path / 'out', '--stages', 'scenes', '--workers', 1, env=env)
    took = time.time() - t0
    assert r.returncode == 1, r.stderr[-2000:]                    # the clip failed: the run says so
    row = rows(tmp_path / 'out')[('sample0', 'scenes')]
    assert row['status'] == 'failed' and 'sample0.mp4: scene split timed out after 3 s' in row['reason'], row['reason']
    assert 'Traceback' not in r.stderr + r.stdout
    assert took < 120, took
    assert not list(Layout(tmp_path / 'out').dir('scenes').glob('*.mp4'))      # nothing half-split is left
    no_half_files(tmp_path / 'out')
    started = pids.read_text().split()
    assert started and not [p for p in started if Path(f'/proc/{p}').exists()], 'the hung ffmpeg is still running'
    # with a working ffmpeg, --retry-failed finishes the clip
    r = talkface('run', '--input', inp, '--output', tmp_path / 'out', '--stages', 'scenes', '--workers', 1, '--retry-failed')
    assert r.returncode == 0 and rows(tmp_path / 'out')[('sample0', 'scenes')]['status'] == 'ok', r.stderr[-2000:]


# -- (c) corrupt intermediates --------------------------------------------------------------------------------------

def test_corrupt_intermediates_are_redone_not_trusted(clean):
    root, clip = clean['out'], 'talk-Scene-001'
    lay = Layout(root)
    png = sorted(lay.path('frames', clip).glob('*.png'))[4]
    npy = lay.path('landmarks', clip, '.npy')
    png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])        # a truncated frame
    npy.write_bytes(npy.read_bytes()[:len(npy.read_bytes()) // 2])        # a half-written array left by an older tool
    assert not is_complete(png) and not is_complete(npy)
    before = rows(root)
    r = talkface('run', '--input', clean['inp'], '--output', root, '--stages', FAST, '--workers', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    after = rows(root)
    redone = {st for (c, st), row in after.items() if row['updated'] != before[(c, st)]['updated']}
    assert redone == {'convert', 'landmarks'}, redone                      # exactly the stages whose outputs were corrupt
    assert tree_hashes(root) == clean['hashes']                            # and they are back, byte for byte
    no_half_files(root)


def test_corrupt_audio_feature_is_redone(clean):
    root, clip = clean['out'], 'talk-Scene-001'
    npy = Layout(root).path('mfcc', clip, '.npy')
    good = npy.read_bytes()
    try:
        npy.write_bytes(good[:len(good) // 2])
        r = talkface('run', '--input', clean['inp'], '--output', root, '--stages', FAST, '--workers', 1)
        assert r.returncode == 0, r.stderr[-2000:]
        assert is_complete(npy) and npy.read_bytes() == good
    finally:
        npy.write_bytes(good)


# -- (d) a read-only output folder ------------------------------------------------------------------------------------

def _unprivileged() -> list[str]:
    "A command prefix that runs as an unprivileged user (root ignores file permissions), or [] when we are not root."
    if os.geteuid() != 0: return []
    if not shutil.which('setpriv'): pytest.skip('running as root and setpriv is missing: cannot drop privileges')
    cmd = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
    r = subprocess.run([*cmd, str(BIN / 'talkface'), '--help'], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HOME='/tmp'), cwd='/tmp')
    if r.returncode != 0: pytest.skip(f'the talkface command is not usable as user nobody: {r.stderr[-300:]}')
    return cmd


def test_read_only_output_is_refused_before_any_work(short_clip):
    cmd = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix='talkface-ro-')); base.chmod(0o755)
    try:
        inp = base / 'input'; inp.mkdir(); shutil.copy2(short_clip, inp / 'talk.mp4')
        inp.chmod(0o755); (inp / 'talk.mp4').chmod(0o644)
        home = base / 'home'; home.mkdir(); home.chmod(0o777)
        ro = base / 'ro'; ro.mkdir(); ro.chmod(0o555)
        env = dict(os.environ, HOME=str(home), TMPDIR=str(home))
        for out in (ro, ro / 'new'):                   # a read-only folder, and a folder to create inside one
            t0 = time.time()
            r = subprocess.run([*cmd, str(BIN / 'talkface'), 'run', '--input', str(inp), '--output', str(out)],
                               capture_output=True, text=True, timeout=300, env=env, cwd=str(home))
            assert r.returncode == 1, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
            assert f'{out}: output folder is not writable' in r.stderr and 'choose another --output' in r.stderr, r.stderr
            assert 'Traceback' not in r.stderr + r.stdout
            assert not any(ro.iterdir()), list(ro.iterdir())        # no work started: nothing was written
            assert time.time() - t0 < 120
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- (e) two runs on one root -------------------------------------------------------------------------------------------

def test_a_second_run_on_a_busy_root_refuses_and_the_first_finishes(clean, tmp_path):
    out = tmp_path / 'out'
    cmd = [str(BIN / 'talkface'), 'run', '--input', str(clean['inp']), '--output', str(out), '--stages', FAST, '--workers', '1']
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = out / '.talkface.lock', time.time() + 300
    while time.time() < deadline and first.poll() is None:          # the lock file holds the pid once the lock is taken
        if lock.exists() and lock.read_text().strip() == str(first.pid): break
        time.sleep(0.05)
    assert first.poll() is None, 'the first run ended before the second could start'
    t0 = time.time()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    still_running = first.poll() is None
    _, err = first.communicate(timeout=600)
    assert second.returncode == 1, second.stderr[-2000:]
    assert 'another talkface run is using this output folder' in second.stderr and 'Traceback' not in second.stderr
    assert still_running, 'the second run should have been refused while the first was working'
    assert first.returncode == 0, err[-2000:]
    assert tree_hashes(out) == clean['hashes']                           # the first run's work is whole and unchanged
    no_half_files(out)


# -- (f) a full disk -------------------------------------------------------------------------------------------------

def _fsize_limit(n: int):
    def set_limit(): resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return set_limit


def test_full_disk_stops_with_a_clear_error_and_leaves_no_half_files(clean, tmp_path):
    out = tmp_path / 'out'
    args = ['run', '--input', clean['inp'], '--output', out, '--stages', FAST, '--workers', 1]
    r = talkface(*args, preexec_fn=_fsize_limit(300_000))       # 300 kB: the 25 fps video and the PNG frames won't fit
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert 'the run stopped: no room to write outputs' in r.stderr and 'make room and run the same command again' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr + r.stdout
    got = rows(out)
    failed = [row for row in got.values() if row['status'] == 'failed']
    assert failed and all(row['figures'].get('out_of_space') for row in failed), failed
    no_half_files(out)
    # once there is room, the same command (no --retry-failed) finishes the job: nothing was lost
    r = talkface(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_hashes(out) == clean['hashes']
    no_half_files(out)


# -- input safety --------------------------------------------------------------------------------------------------------

def test_no_shell_anywhere_in_the_package():
    src = {p.name: p.read_text(encoding='utf-8') for p in package_dir().glob('*.py')}
    assert len(src) > 10
    for name, text in src.items():
        for bad in (r'shell\s*=\s*True', r'os\.system\(', r'os\.popen\(', r'getoutput\(', r'getstatusoutput\(', r'os\.exec[lv]p?e?\('):
            assert not re.search(bad, text), f'{name}: {bad}'


def test_unsafe_clip_ids_are_refused():
    from talkface.core import BadInput, clip_id, Layout
    lay = Layout('/data/out')
    for bad in ('../x', '..', 'a/b', '../../etc/passwd', '/abs', ''):
        with pytest.raises(BadInput, match='unsafe clip id'): lay.path('raw', bad, '.mp4')
    for name in ('../x.mp4', '..mp4', '...mp4', '.hidden.mp4', 'a\\b.mp4', '-x.mp4', 'a\nb.mp4'):
        cid = clip_id(name)
        assert lay.path('raw', cid, '.mp4').parent == lay.dir('raw'), (name, cid)     # always one name inside the folder


HOSTILE = ['-leading dash.mp4', "q'uo\"te $(touch PWNED) `touch PWNED2`; rm -rf x.mp4", 'ünï cødé.mp4']


def test_hostile_names_never_reach_a_shell_nor_leave_the_root(short_clip, tmp_path):
    inp = tmp_path / 'input'; inp.mkdir()
    for n in HOSTILE: shutil.copy2(short_clip, inp / n)
    log = tmp_path / 'ffmpeg-args'
    wrapper = tmp_path / 'bin' / 'ffmpeg'; wrapper.parent.mkdir()     # records each ffmpeg argument list, then runs ffmpeg
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "{log}"\nprintf "\\n\\0" >> "{log}"\n'
                       f'exec "{ffmpeg_exe()}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / 'cwd'; work.mkdir()
    out = tmp_path / 'out'
    r = talkface('run', '--input', inp, '--output', out, '--stages', 'scenes,filter,crop,convert', '--frames', 'none',
                 '--workers', 1, env=env, cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    got = rows(out)
    convert = {c: row['status'] for (c, st), row in got.items() if st == 'convert'}
    assert len(convert) == len(HOSTILE) and set(convert.values()) == {'ok'}, convert
    # nothing was created outside the output root, no command in a name ran
    assert not list(work.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ['bin', 'cwd', 'ffmpeg-args', 'input', 'out']
    assert not [p for p in tmp_path.rglob('PWNED*')] and not Path('PWNED').exists()
    for p in out.rglob('*'): assert p.resolve().is_relative_to(out.resolve()), p
    # every ffmpeg argument that names one of our files is an absolute 'file:' path, never something ffmpeg could read as an option
    calls = [c.split('\0') for c in log.read_bytes().decode('utf-8').split('\n\0') if c.strip('\0')]
    assert calls, 'ffmpeg was never run'
    for call in calls:
        for a in call:
            if any(Path(n).stem in a for n in HOSTILE if Path(n).stem not in ('.',)) or str(tmp_path) in a:
                assert a.startswith('file:/'), (a, call)
