"The QC report: written from a real run, and rendered by headless Chromium."
import re, shutil, subprocess
import pytest
from talkface.report import write_report
from conftest import BIN

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
# appended to a copy of the page: after load, record for each image whether it decoded
PROBE = """<script>window.addEventListener('load', () => { document.body.setAttribute('data-images',
  Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 ? 'ok' : 'broken').join(',')); });</script>"""


@pytest.fixture(scope='module')
def report(reference):
    _, root, _ = reference
    return write_report(root)


def test_report_has_every_section(report):
    html, md = report
    text = md.read_text()
    for head in ('Clips per stage', 'Why clips stopped', 'Durations', 'Face size', 'Head pose', 'Action units and blinks',
                 'Speech', 'Landmarks', 'Audio-visual sync', 'Slowest clips'):
        assert f'## {head}' in text
    assert '| landmarks | 4 | 0 | 0 |' in text
    page = html.read_text()
    assert page.count('src="data:image/png;base64,') >= 6 and 'src="http' not in page   # self-contained
    for img in re.findall(r'\]\((report_files/[^)]+)\)', text): assert (md.parent / img).stat().st_size > 1000


def test_report_command(reference):
    _, root, _ = reference
    r = subprocess.run([str(BIN / 'talkface'), 'report', str(root)], capture_output=True, text=True)
    assert r.returncode == 0 and 'report.html' in r.stdout
    r = subprocess.run([str(BIN / 'talkface'), 'report', str(root / 'nowhere')], capture_output=True, text=True)
    assert r.returncode == 2 and 'no manifest here' in r.stderr            # a root without a manifest: a usage error


def test_report_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM: pytest.skip('headless Chromium is not installed (Debian package: chromium)')
    html, _ = report
    page = tmp_path / 'probe.html'
    page.write_text(html.read_text().replace('</body>', PROBE + '</body>'))
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={tmp_path / "profile"}', '--virtual-time-budget=5000', '--dump-dom', page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images="([^"]*)"', r.stdout)
    assert m, r.stderr[-2000:]
    states = m.group(1).split(',')
    assert len(states) >= 6 and set(states) == {'ok'}, states
