"ClipViewer: rendering without a browser, PNG output, the widget, and gathering a clip's outputs from a layout."
import cv2, numpy as np, pytest
from talkface.core import Layout
from talkface.media import FrameReader
from talkface.viewer import ClipViewer
from talkface.faces import grace_hopper


@pytest.fixture(scope='module')
def clip():
    from talkface.landmarks import track_landmarks
    from talkface.pose import head_pose
    from talkface.aus import geometry_table
    img = grace_hopper()
    frames = [np.roll(img, 3 * i, axis=1) for i in range(6)]
    tr = track_landmarks((str(i), f) for i, f in enumerate(frames))
    pose = head_pose(tr.pts)
    aus, _ = geometry_table(tr.pts, tr.valid)
    return frames, tr.pts, pose, aus


def test_render_and_png(clip, tmp_path):
    frames, pts, pose, aus = clip
    v = ClipViewer(frames, pts, pose, aus, title='t', dpi=50)
    a, b = v.render(0), v.render(5)
    assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8 and a.shape == b.shape and not np.array_equal(a, b)
    p = v.save_png(2, tmp_path / 'f.png')
    assert cv2.imread(str(p)).shape == a.shape
    assert v.png(1)[:8] == b'\x89PNG\r\n\x1a\n'


def test_frames_only_and_partial_outputs(clip):
    frames, pts, pose, aus = clip
    assert ClipViewer(frames).render(0).ndim == 3                     # nothing but frames
    assert ClipViewer(frames, pts[:3], None, aus.iloc[:2]).render(4).ndim == 3   # shorter outputs than frames


def test_widget_slider_redraws(clip):
    pytest.importorskip('ipywidgets')
    frames, pts, pose, aus = clip
    v = ClipViewer(frames, pts, pose, aus, dpi=40)
    box = v.show(1)
    assert box.slider.max == 5 and box.image.value == v.png(1)
    box.slider.value = 4
    assert box.image.value == v.png(4)


def test_frame_source_video_seek(tmp_path):
    from talkface.media import run_ffmpeg, ffpath, read_frame
    vid = tmp_path / 'v.mp4'
    d = tmp_path / 'f'; d.mkdir()
    for i in range(30): cv2.imwrite(str(d / f'{i + 1:06d}.png'), np.full((64, 64, 3), i * 8, np.uint8))
    run_ffmpeg(['-framerate', 25, '-i', ffpath(d) + '/%06d.png', '-c:v', 'libx264', '-g', 10, '-pix_fmt', 'yuv420p', ffpath(vid)], vid)
    fs = FrameReader(vid)
    assert len(fs) == 30 and len(FrameReader(d)) == 30
    for i in (17, 18, 3, 29, 0):
        assert abs(int(fs[i].mean()) - int(read_frame(vid, i).mean())) <= 1 and abs(int(fs[i].mean()) - i * 8) <= 3


def test_from_layout(tmp_path):
    from talkface.landmarks import landmarks_clip
    from talkface.pose import pose_clip, PoseConfig
    from talkface.aus import aus_clip
    lay = Layout(tmp_path)
    d = lay.path('frames', 'c'); d.mkdir(parents=True)
    for i in range(4): cv2.imwrite(str(d / f'{i + 1:06d}.png'), np.roll(grace_hopper(), 2 * i, axis=0))
    landmarks_clip('c', lay); pose_clip('c', lay, PoseConfig(visualize=False)); aus_clip('c', lay)
    v = ClipViewer.from_layout('c', lay)
    assert len(v) == 4 and v.landmarks.shape == (4, 68, 2) and v.pose.shape == (4, 3) and len(v.aus) == 4
    assert v.render(3).ndim == 3
