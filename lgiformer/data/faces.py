"""Face crops for footage that is not face-cropped: detect, track, smooth, crop, resize.

The released DFER data (DFEW, FERV39k, MAFW) are face crops, and so is what a finetuned model expects. This module
turns raw footage into such crops, once, for both ``python -m data_lists crop-faces`` (a list in, crops and a new
list out) and ``python -m lgiformer.predict --crop-faces``.

Detector: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, Viola-Jones). Its weights ship
inside the ``opencv-python-headless`` 4.x wheel (``cv2.data.haarcascades``), so nothing is downloaded at run time; it
runs on a CPU (about 75 ms per 480 x 360 frame on one slow core) and needs no other package. The alternatives fail
this project's constraints: the OpenCV 5 wheels moved the cascade classifier to contrib and ship no detector
weights; YuNet and the DNN detectors need model files from elsewhere; mediapipe's current API wants a downloaded
model and pulls in a second, GUI OpenCV; facenet-pytorch's MTCNN needs torchvision's nms, which the CPU install of
torch 2.13 cannot load (docs/TOOLS.md). What it misses: profile faces (it is trained on frontal faces: turned beyond
roughly 30-45 degrees), faces tilted in the image plane beyond about 20 degrees and faces smaller than about 30 px
at the detection size (both measured on the test photograph), strong occlusion (hands, masks) and very dark footage;
it also fires now and then on face-like texture. The tracking below absorbs short misses and isolated false
detections, not a face that is never frontal.

Per video:

1. detect on every frame, downscaled so that its short side is at most ``detect_side`` px; boxes smaller than
   ``min_face`` x the short side are ignored;
2. track: each detection joins the track whose last box overlaps it most (IoU >= 0.3, at most ``max_gap`` frames
   earlier), or starts a new one; the track with the largest summed box area wins: the largest, most persistent
   face (with several people, the others are ignored; a brief false detection is a small, short track);
3. fill: a frame where the winning track has no box gets a box interpolated between its neighbours (a missed frame
   of a moving face stays on the face); before the track's first box and after its last, the nearest box is held;
4. smooth: the box centre and side are median-filtered over ``smooth`` frames (a symmetric window, shrunk at the
   ends), which removes the detector's jitter and single-frame outliers but follows steady motion exactly;
5. crop: a square of side ``(1 + 2 * margin)`` x the box side around the smoothed centre, moved inside the frame
   (and shrunk to the frame's short side if larger), resized to ``size`` x ``size``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lgiformer.data.readers import FrameFolderReader, VideoReadError
from lgiformer.data.synthetic.writers import write_frames, write_mp4
from lgiformer.provenance import atomic_directory

log = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"
INSTALL_HINT = "pip install 'opencv-python-headless>=4.5,<5' (or the project's extra: pip install -e '.[faces]')"
OUTPUT_FORMATS = ("frames", "mp4")


class NoFaceError(ValueError):
    """No frame of the video has a face the detector finds."""


@dataclass(frozen=True)
class FaceCropSettings:
    """How crops are made; the defaults are used by both the list builder and ``predict --crop-faces``, so a model
    finetuned on crops from one sees the same framing through the other."""

    size: int = 224           # output side, px (DFEW's released crops are 224 x 224)
    margin: float = 0.25      # added on each side, as a fraction of the detected box side (Haar boxes are tight:
    #                           brows to mouth; 0.25 gives a crop of 1.5 x the box: forehead to chin)
    smooth: int = 9           # frames in the median window of the box track (odd; 1 = no smoothing)
    min_face: float = 0.08    # smallest face side, as a fraction of the frame's short side
    detect_side: int = 360    # frames are downscaled to this short side (at most) for detection
    max_gap: int = 25         # frames a track may go undetected and still be continued

    def __post_init__(self) -> None:
        if self.size < 8 or self.margin < 0 or self.smooth < 1 or self.smooth % 2 == 0 or not 0 < self.min_face < 1 \
                or self.detect_side < 32 or self.max_gap < 0:
            raise ValueError(f"bad face crop settings {asdict(self)}: expected size >= 8, margin >= 0, an odd "
                             "smooth >= 1, 0 < min_face < 1, detect_side >= 32, max_gap >= 0")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(f"face cropping needs OpenCV: {INSTALL_HINT}") from None
    return cv2


class HaarFaceDetector:
    """OpenCV's frontal-face cascade on the histogram-equalised grey frame. ``detect(frame)`` -> float boxes
    ``[K, 4]`` as ``(x, y, w, h)`` in the frame's pixels."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5) -> None:
        cv2 = _cv2()
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, CASCADE)
        if not hasattr(cv2, "CascadeClassifier") or not os.path.isfile(path):
            raise ImportError(f"OpenCV {cv2.__version__} has no {CASCADE} (the 5.x wheels dropped the Haar "
                              f"cascades): {INSTALL_HINT}")
        self.cascade = cv2.CascadeClassifier(path)
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, frame: np.ndarray, min_side: int = 24) -> np.ndarray:
        cv2 = _cv2()
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY))
        boxes = self.cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(min_side, min_side))
        return np.asarray(boxes, np.float64).reshape(-1, 4)


def detect_faces(frame: np.ndarray, detector: HaarFaceDetector, settings: FaceCropSettings) -> np.ndarray:
    """Boxes ``[K, 4]`` (x, y, w, h) of one uint8 RGB frame, in its own pixels, found on a copy downscaled to at most
    ``settings.detect_side`` on the short side."""
    h, w = frame.shape[:2]
    scale = min(1.0, settings.detect_side / min(h, w))
    small = frame
    if scale < 1.0:
        small = _cv2().resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=_cv2().INTER_AREA)
    min_side = max(8, int(settings.min_face * min(small.shape[:2])))
    return detector.detect(small, min_side) / scale


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class FaceTrack:
    """The face followed through a video: ``boxes [T, 4]`` (x, y, w, h; filled and smoothed, float) and
    ``detected [T]`` (True where the chosen track had a detection in that frame)."""

    boxes: np.ndarray
    detected: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.boxes)

    def summary(self) -> dict:
        return dict(frames=self.num_frames, detected=int(self.detected.sum()))


def track_faces(detections: Sequence[np.ndarray], settings: FaceCropSettings = FaceCropSettings(),
                iou_threshold: float = 0.3) -> FaceTrack:
    """Steps 2-4 of the module docstring on per-frame detections (each ``[K, 4]``); raises :class:`NoFaceError`
    when no frame has a detection."""
    tracks: list[dict] = []
    for t, boxes in enumerate(detections):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        taken: set[int] = set()
        for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
            best, best_iou = None, iou_threshold
            for k, track in enumerate(tracks):
                if k in taken or t - track["last"] > settings.max_gap + 1:
                    continue
                overlap = _iou(track["boxes"][track["last"]], box)
                if overlap >= best_iou:
                    best, best_iou = k, overlap
            if best is None:
                tracks.append(dict(boxes={}, last=t, area=0.0))
                best = len(tracks) - 1
            track = tracks[best]
            track["boxes"][t], track["last"] = box, t
            track["area"] += float(box[2] * box[3])
            taken.add(best)
    if not tracks:
        raise NoFaceError(f"no face found in any of {len(detections)} frames")
    chosen = max(tracks, key=lambda tr: tr["area"])["boxes"]
    n = len(detections)
    detected = np.array([t in chosen for t in range(n)])
    known = np.array(sorted(chosen))
    values = np.stack([chosen[t] for t in known])
    # np.interp holds the end values outside the known frames
    filled = np.stack([np.interp(np.arange(n), known, values[:, j]) for j in range(4)], 1)
    return FaceTrack(smooth_boxes(filled, settings.smooth), detected)


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """Median filter of each box's centre and side over a symmetric window of up to ``window`` frames (shrunk at the
    ends so that it stays centred: a box moving at constant speed is left as it is)."""
    if window <= 1 or len(boxes) < 3:
        return boxes.astype(np.float64).copy()
    side = np.sqrt(boxes[:, 2] * boxes[:, 3])
    params = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2, side], 1)
    out = np.empty_like(params)
    n, half = len(boxes), window // 2
    for t in range(n):
        k = min(half, t, n - 1 - t)
        out[t] = np.median(params[t - k:t + k + 1], axis=0)
    cx, cy, s = out.T
    return np.stack([cx - s / 2, cy - s / 2, s, s], 1)


def crop_square(box: np.ndarray, frame_hw: tuple[int, int], margin: float) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the square crop around ``box`` (step 5), inside a frame of ``frame_hw`` = (H, W)."""
    h, w = frame_hw
    side = int(round(max(box[2], box[3]) * (1 + 2 * margin)))
    side = max(1, min(side, h, w))
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    return x0, y0, side


def crop_frame(frame: np.ndarray, box: np.ndarray, settings: FaceCropSettings) -> np.ndarray:
    """One uint8 ``[size, size, 3]`` crop of ``frame`` around ``box``."""
    cv2 = _cv2()
    x0, y0, side = crop_square(box, frame.shape[:2], settings.margin)
    patch = np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side])
    inter = cv2.INTER_AREA if side > settings.size else cv2.INTER_LINEAR
    return cv2.resize(patch, (settings.size, settings.size), interpolation=inter)


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Every frame of a video file (decoded in order, PyAV) or of a frame folder, as uint8 ``[H, W, 3]`` RGB."""
    path = Path(path)
    if path.is_dir():
        reader = FrameFolderReader(path)
        for i in range(len(reader)):
            yield reader.get([i])[0]
        return
    if not path.is_file():
        raise VideoReadError(path, "no such file or folder")
    import av

    try:
        container = av.open(str(path))
    except Exception as err:
        raise VideoReadError(path, f"not a readable video ({str(err).splitlines()[0][:200]}); expected a video file "
                                   "or a folder of frames") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(path, "has no video stream; expected a video file or a folder of frames")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise VideoReadError(path, f"cannot decode it ({err})") from None


def video_fps(path: str | os.PathLike, default: float = 25.0) -> float:
    """Frame rate of a video file (``default`` for frame folders and files that do not say)."""
    path = Path(path)
    if path.is_dir():
        return default
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else default
    except Exception:
        return default


def find_face_track(path: str | os.PathLike, settings: FaceCropSettings = FaceCropSettings(),
                    detector: HaarFaceDetector | None = None) -> FaceTrack:
    """Steps 1-4 on every frame of ``path``; :class:`NoFaceError` names the file when no frame has a face."""
    detector = detector or HaarFaceDetector()
    detections = [detect_faces(frame, detector, settings) for frame in iter_frames(path)]
    if not detections:
        raise VideoReadError(path, "no frames")
    try:
        return track_faces(detections, settings)
    except NoFaceError as err:
        raise NoFaceError(f"{path}: {err} (the detector finds frontal faces only; pass footage that is already "
                          "face-cropped without cropping)") from None


def crop_video(path: str | os.PathLike, settings: FaceCropSettings = FaceCropSettings(),
               detector: HaarFaceDetector | None = None) -> tuple[np.ndarray, FaceTrack]:
    """Face crops of every frame of ``path``: ``(frames uint8 [T, size, size, 3], track)``. Two decoding passes
    (detect, then crop), so only the crops are held in memory."""
    track = find_face_track(path, settings, detector)
    crops = np.empty((track.num_frames, settings.size, settings.size, 3), np.uint8)
    count = 0
    for frame, box in zip(iter_frames(path), track.boxes):
        crops[count] = crop_frame(frame, box, settings)
        count += 1
    if count != track.num_frames:
        raise VideoReadError(path, f"{count} frames decoded on the second pass, {track.num_frames} on the first")
    return crops, track


def write_crops(frames: np.ndarray, out: str | os.PathLike, fmt: str = "frames", fps: float = 25.0,
                jpeg_quality: int = 95) -> Path:
    """Write crops atomically: a folder ``out/1.jpg ... out/T.jpg`` (``frames``, DFEW-style naming) or an H.264 mp4
    ``out`` (``mp4``). The output is complete or absent."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        write_mp4(out, frames, fps=max(1, round(fps)), crf=18)
        return out
    with atomic_directory(out) as tmp:
        write_frames(tmp, frames, jpeg_quality)
    return out


def crop_to(path: str | os.PathLike, out: str | os.PathLike, settings: FaceCropSettings = FaceCropSettings(),
            fmt: str = "frames", detector: HaarFaceDetector | None = None) -> FaceTrack:
    """:func:`crop_video` then :func:`write_crops` (the source's frame rate for mp4)."""
    frames, track = crop_video(path, settings, detector)
    write_crops(frames, out, fmt, fps=video_fps(path))
    return track

