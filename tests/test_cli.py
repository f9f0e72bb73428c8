"The `talkface` command as a user runs it: the README's command lines, the exit rule, and a new stage in one declaration."
import contextlib, io, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from talkface.core import Layout, Manifest, STAGES, stage_order
from talkface.sample import demo_sample

TALKFACE = str(Path(sys.executable).parent / 'talkface')

def talkface(*args, cwd=None, env=None):
    return subprocess.run([TALKFACE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)

def test_help_lists_every_stage():
    r = talkface('--help')
    assert r.returncode == 0
    for cmd in 'sample demo scenes filter crop convert landmarks sync pose aus audio identity run report status batch export rebuild'.split():
        assert f'  {cmd} ' in r.stdout, cmd

def test_unknown_command_is_a_clear_error():
    r = talkface('nonsense')
    assert r.returncode == 2 and "unknown command 'nonsense'" in r.stderr

def test_usage_errors_exit_2(tmp_path):
    r = talkface('crop', '--from_dir_prefix', tmp_path / 'nowhere', '--output_dir_prefix', tmp_path / 'o')
    assert r.returncode == 2 and 'nowhere: input folder does not exist' in r.stderr
    r = talkface('crop', '--no_such_flag')
    assert r.returncode == 2 and 'unrecognized arguments' in r.stderr
    r = talkface('run', '--input', tmp_path / 'nowhere', '--output', tmp_path / 'o')
    assert r.returncode == 2 and 'input folder does not exist' in r.stderr
    r = talkface('run', '--input', tmp_path, '--stages', 'crop,nothing')
    assert r.returncode == 2 and 'unknown stage(s): nothing' in r.stderr
    r = talkface('run', '--input', tmp_path, '--keep', 'pose_video,thumbnails')
    assert r.returncode == 2 and 'unknown output(s) thumbnails' in r.stderr

def test_every_stage_command_has_its_settings_and_original_flags():
    for st in stage_order():
        r = talkface(st.name, '--help')
        assert r.returncode == 0, (st.name, r.stderr)
        for flag in st.flags: assert flag in r.stdout, (st.name, flag)


@pytest.fixture(scope='module')
def readme(tmp_path_factory):
    "A folder to run the README's command lines in: a raw video, and tiny random HuBERT weights where the README points."
    d = tmp_path_factory.mktemp('readme')
    (d / 'raw').mkdir()
    shutil.copy(demo_sample(), d / 'raw' / 'talk.mp4')
    from talkface.audio import make_random_model
    make_random_model('hubert', d / 'weights' / 'chinese-hubert-large')
    return d

def test_readme_stage_by_stage(readme):
    "The README's stage-by-stage section, line by line, each step on the previous one's output."
    d = readme
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    steps = [
        ['scenes', '--from_directory', 'raw/', '--output_directory', 'scenes/', '--threshold', '16'],
        ['filter', '--before_filtering_dir', 'scenes/', '--after_filtering_dir', 'raw_data/', '--min_duration', '2', '--min_size', '10'],
        ['crop', '--from_dir_prefix', 'data_processing/raw_data/', '--output_dir_prefix', 'data_processing/cropped_faces/',
         '--expanded_ratio', '0.6'],
        ['convert', '--source_folder', 'data_processing/cropped_faces/',
         '--video_target_folder', 'data_processing/specified_formats/videos/videos_25fps/',
         '--audio_target_folder', 'data_processing/specified_formats/audios/audios_16k/',
         '--frames_target_folder', 'data_processing/specified_formats/videos/video_frames/',
         '--convert_video', '--convert_audio', '--extract_frames'],
        ['landmarks', '--from_dir', 'data_processing/specified_formats/videos/video_frames/',
         '--lmd_output_dir', 'data_processing/specified_formats/videos/landmarks/', '--skip_existing'],
        ['sync', '--videos_dir', 'data_processing/specified_formats/videos/videos_25fps/',
         '--audios_dir', 'data_processing/specified_formats/audios/audios_16k/', '--output_dir', 'data_processing/specified_formats/videos/sync/',
         '--landmarks_dir', 'data_processing/specified_formats/videos/landmarks/', '--max_offset', '15'],
        ['audio', '--feature', 'hubert', '--model_path', 'weights/chinese-hubert-large',
         '--audio_dir_path', 'data_processing/specified_formats/audios/audios_16k/',
         '--audio_feature_saved_path', 'data_processing/specified_formats/audios/hubert_features/', '--computed_device', 'cuda',
         '--padding_to_align_audio', 'True'],
    ]
    for k, step in enumerate(steps):
        if k == 2: shutil.copytree(d / 'raw_data', d / 'data_processing' / 'raw_data', ignore=shutil.ignore_patterns('manifest*', '*.log'))
        r = talkface(*step, cwd=d, env=env)
        assert r.returncode == 0, (step, r.stdout[-2000:], r.stderr[-2000:])
    assert len(list((d / 'scenes').glob('talk-Scene-*.mp4'))) == 2
    assert sorted(p.name for p in (d / 'raw_data').glob('*.mp4')) == ['talk-Scene-001.mp4', 'talk-Scene-002.mp4']
    lay = Layout(d / 'data_processing')
    for c in ('talk-Scene-001', 'talk-Scene-002'):
        assert lay.path('cropped', c, '.mp4').exists() and lay.path('audios_16k', c, '.wav').exists()
        assert (lay.path('frames', c) / '000001.png').exists() and lay.path('landmarks', c, '.txt').exists()
        assert (lay.dir('hubert') / f'{c}.npy').exists() and lay.path('sync', c, '.json').exists()
    m = Manifest(d / 'data_processing')                  # convert and landmarks write under specified_formats/: one manifest above it
    assert {r['stage'] for r in m.rows()} >= {'convert', 'landmarks', 'sync'}
    m.close()
    assert (d / 'data_processing' / 'cropped_faces' / 'manifest.sqlite').exists()    # crop's output folder is its root, as before

def test_readme_run_status_report(tmp_path):
    inp = tmp_path / 'raw_videos'
    inp.mkdir()
    shutil.copy(demo_sample(), inp / 'talk.mp4')
    out = tmp_path / 'data_processing'
    r = talkface('run', '--input', inp, '--output', out, '--frames', 'none', '--workers', '1', '--stages', 'scenes,filter,crop,convert')
    assert r.returncode == 0, r.stderr[-2000:]
    r = talkface('status', out, '--clips')
    assert r.returncode == 0 and 'talk ' in r.stdout
    r = talkface('report', out)
    assert r.returncode == 0 and (out / 'report.html').exists()
    r = talkface('status', tmp_path / 'nothing')
    assert r.returncode == 2 and 'no manifest here' in r.stderr
    (tmp_path / 'talkface.yaml').write_text('stages: [scenes, filter, crop]\nworkers: 1\ncrop: {expanded_ratio: 0.6, skip_per_frame: 25}\n')
    r = talkface('run', '--input', inp, '--output', tmp_path / 'o2', '--config', tmp_path / 'talkface.yaml', '--set', 'crop.expanded_ratio=0.8')
    assert r.returncode == 0, r.stderr[-2000:]
    box = json.loads(next((tmp_path / 'o2' / 'cropped_faces').glob('*.json')).read_text())
    assert box['expanded_ratio'] == 0.8


# ---- a new stage is its module plus one declaration --------------------------------------------------------------

from dataclasses import dataclass
from talkface.core import Stage, ok, register, write_json

@dataclass
class ToyConfig:
    scale: float = 2.0   # how much louder the toy makes a clip

def toy_clip(clip, layout, cfg):
    dest = write_json(layout.path('toy_out', clip, '.json'), {'clip': clip, 'scale': cfg.scale})
    return ok([dest], scale=cfg.scale)

def run_main(*args) -> tuple[int, str]:
    from talkface.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out): rc = main([str(a) for a in args])
    return rc, out.getvalue()

def test_a_toy_stage_declared_once_is_everywhere(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('input_dir = None\noutput_dir = None', metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell('print(input_dir)')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path / 'toy.ipynb')
    register(Stage('toy', toy_clip, ToyConfig, {'toy_out': 'toys'}, reads=('raw',), after=('filter',), notebook=str(tmp_path / 'toy.ipynb'),
                   flags={'--toy_dir': 'toy_out'}, help='a toy stage'))                         # the one declaration
    try:
        (tmp_path / 'in').mkdir()
        shutil.copy(demo_sample(), tmp_path / 'in' / 'a.mp4')
        assert 'toy' in [s.name for s in stage_order()]
        rc, text = run_main('--help')
        assert rc == 0 and '  toy        a toy stage' in text
        rc, text = run_main('run', '--input', tmp_path / 'in', '--output', tmp_path / 'out', '--stages', 'toy', '--workers', 1, '--scale', 3)
        assert rc == 0, text
        assert json.loads(Layout(tmp_path / 'out').path('toy_out', 'a', '.json').read_text())['scale'] == 3.0
        assert (tmp_path / 'out' / 'toys' / 'a.json').exists()                               # the layout knows its folder
        rc, text = run_main('toy', '--help')
        assert rc == 0 and 'how much louder the toy makes a clip (default 2.0)' in ' '.join(text.split()) and '--toy_dir' in text
        rc, text = run_main('toy', '--input', tmp_path / 'in', '--toy_dir', tmp_path / 't', '--scale', 5)
        assert rc == 0 and json.loads((tmp_path / 't' / 'a.json').read_text())['scale'] == 5.0
        rc, text = run_main('status', tmp_path / 'out')
        assert rc == 0 and '\ntoy ' in text
        rc, text = run_main('batch', 'toy', '--input', tmp_path / 'in', '--output', tmp_path / 'b')
        assert rc == 0 and (tmp_path / 'b' / 'notebooks' / 'toy.ipynb').exists()
    finally: del STAGES['toy']
