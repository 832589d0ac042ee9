"""``casd app``: pose transfer, try-on, head swap and style mixing in the browser (Gradio, the ``[app]`` extra).

:class:`Studio` is the model side: a :class:`Synthesizer`, the style tokens of
every person chosen so far (encoded once, so an interaction only reruns the
decoder), and one decode per interaction that gives the picture and the
predicted target parsing. :func:`build_ui` lays the page out on it; the pose
editor is a canvas whose value :func:`editor_to_keypoints` and
:func:`keypoints_to_editor` convert to and from the prepared image frame.
"""

import atexit
import dataclasses
import hashlib
import html
import json
import math
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from casd import control, visuals
from casd.data.images import NUM_REGIONS, REGION_NAMES
from casd.data.layout import flat_category, flat_stem
from casd.data.tables import NUM_KEYPOINTS
from casd.data.dataset import flip_keypoints
from casd.data.pose import KEYPOINT_NAMES, LIMBS
from casd.errors import CasdError, DataError
from casd.fileio import atomic_path
from casd.inference import DATA_ROOT, Person, Synthesizer, donor_panels, result_strip

DEFAULT_CHECKPOINT = Path("models/generator.pt")
GALLERY_PAGE = 60  # pictures per gallery page
NAME_CHOICES = 30  # names a name box lists (the first ones, or those matching what was typed)
EDITOR_SIDE = 384  # pose editor canvas height in CSS pixels (an integer multiple of the image height)
UPLOAD_PREFIX = "upload:"


# --------------------------------------------------------------------------- pose editor <-> prepared frame

def editor_scale(image_size: Sequence[int]) -> int:
    """Canvas pixels per image pixel: the editor is about EDITOR_SIDE high, an integer multiple of H."""
    return max(1, round(EDITOR_SIDE / int(image_size[0])))


def keypoints_to_editor(keypoints: np.ndarray | torch.Tensor, image_size: Sequence[int]) -> dict[str, Any]:
    """Keypoints [18, 2] (y, x; -1 missing) -> the editor's value.

    The value is ``{"width", "height", "points": [[x, y]] * 18, "hidden": [bool] * 18}``
    in canvas pixels, each joint at the centre of its image pixel. A missing
    joint is hidden; it is parked at the canvas centre so that showing it again
    puts it somewhere it can be dragged from.
    """
    h, w = int(image_size[0]), int(image_size[1])
    scale = editor_scale(image_size)
    kp = np.asarray(keypoints.cpu() if isinstance(keypoints, torch.Tensor) else keypoints, dtype=np.int64)
    if kp.shape != (NUM_KEYPOINTS, 2):
        raise CasdError(f"keypoints must be [{NUM_KEYPOINTS}, 2] (y, x), got {kp.shape}")
    hidden = (kp < 0).any(axis=1)
    points = [[w * scale / 2, h * scale / 2] if hide else [(x + 0.5) * scale, (y + 0.5) * scale]
              for (y, x), hide in zip(kp.tolist(), hidden.tolist())]
    return {"width": w * scale, "height": h * scale, "points": points, "hidden": hidden.tolist()}


def editor_to_keypoints(value: Mapping[str, Any] | str, image_size: Sequence[int]) -> np.ndarray:
    """The editor's value (canvas pixels, any canvas size) -> int64 [18, 2] (y, x) in the prepared frame.

    A canvas point maps to the image pixel it falls in (clamped to the image);
    hidden joints become -1 (missing), as in the prepared keypoints.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise CasdError(f"pose editor: value is not JSON ({e})") from None
    try:
        width, height = float(value["width"]), float(value["height"])
        points = np.asarray(value["points"], dtype=np.float64)
        hidden = np.asarray(value.get("hidden", [False] * NUM_KEYPOINTS), dtype=bool)
    except (KeyError, TypeError, ValueError) as e:
        raise CasdError(f"pose editor: malformed value ({e!r})") from None
    if points.shape != (NUM_KEYPOINTS, 2) or hidden.shape != (NUM_KEYPOINTS,) or width <= 0 or height <= 0:
        raise CasdError(f"pose editor: expected {NUM_KEYPOINTS} [x, y] points on a positive canvas, "
                        f"got points {points.shape} on {width}x{height}")
    h, w = int(image_size[0]), int(image_size[1])
    y = np.clip(np.floor(points[:, 1] * h / height), 0, h - 1)
    x = np.clip(np.floor(points[:, 0] * w / width), 0, w - 1)
    keypoints = np.stack([y, x], axis=1).astype(np.int64)
    keypoints[hidden | ~np.isfinite(points).all(axis=1)] = -1
    return keypoints


def mirror_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """Keypoints [18, 2] (y, x) flipped left-right in an image ``width`` wide (left and right joints swap), as
    the training flips them."""
    return flip_keypoints(torch.as_tensor(np.asarray(keypoints, dtype=np.int64)), width).numpy()


# --------------------------------------------------------------------------- model side

@dataclasses.dataclass
class Choice:
    """What the page asks for. People are prepared image names or :meth:`Studio.add_upload` keys."""

    source: str
    keypoints: np.ndarray                                    # int64 [18, 2] (y, x), -1 missing
    donors: dict[str, str] = dataclasses.field(default_factory=dict)   # region -> person
    mix: str | None = None
    alpha: float = 0.5
    mix_regions: list[str] | None = None                     # None: all regions


@dataclasses.dataclass
class Rendered:
    image: np.ndarray      # uint8 [H, W, 3], the result
    parsing: np.ndarray    # uint8 [H, W], predicted target region ids
    seconds: float         # model time of this interaction (encode of new people + decode)


@dataclasses.dataclass
class Response:
    """What the page shows after one interaction."""

    number: int                  # interactions answered so far
    rendered: Rendered
    panels: dict[str, Any]       # uint8 pictures (see Studio.panels)
    files: list[Path]            # result.png, strip.png, pose.json
    command: str                 # the equivalent casd generate call


class Studio:
    """A Synthesizer with a cache of people and their style tokens; one interaction at a time (a lock)."""

    def __init__(self, synthesizer: Synthesizer, *, checkpoint: str | Path | None = None, cache_size: int = 64):
        self.synthesizer = synthesizer
        self.checkpoint = checkpoint
        self.image_size = tuple(int(s) for s in synthesizer.image_size)
        self.cache_size = cache_size
        self._people: OrderedDict[str, Person] = OrderedDict()
        self._tokens: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._uploads: dict[str, tuple[Person, str, str]] = {}   # key -> (person, image file name, parsing name)
        self._lock = threading.RLock()
        self._answered = 0
        # prepared people: name -> image file (those with a parsing map), and the names with keypoints
        layout = synthesizer.layout
        self.list_people({n: path for n, path, phase in (self._find(n) for n in sorted(layout.image_names()))
                          if path is not None and layout.parsing_map(phase, n).is_file()},
                         sorted(synthesizer.keypoint_table()))

    def list_people(self, images: Mapping[str, Path], pose_names: Sequence[str]) -> None:
        """The people the page offers: ``images`` {name: image file}, ``pose_names`` (names with keypoints)."""
        self.images = dict(images)
        self.names = list(self.images)
        self.pose_names = list(pose_names)
        self._pose_set = set(self.pose_names)
        self._search_text = [f"{n} {flat_category(n)}".lower() for n in self.names]

    def search(self, query: str, poses: bool = False) -> list[str]:
        """Names (with keypoints only, with ``poses``) that contain every word of ``query``, any case."""
        terms = query.lower().split()
        found = [n for n, text in zip(self.names, self._search_text) if all(t in text for t in terms)]
        return [n for n in found if n in self._pose_set] if poses else found

    def has_pose(self, name: str) -> bool:
        return name in self._pose_set

    def _find(self, name: str) -> tuple[str, Path | None, str | None]:
        found = self.synthesizer.layout.find_image(name)
        return (name, None, None) if found is None else (name, *found)

    # ---- people

    def person(self, key: str) -> Person:
        if key in self._uploads:
            return self._uploads[key][0]
        if key not in self._people:
            self._people[key] = self.synthesizer.person(key)
            while len(self._people) > self.cache_size:
                self._people.popitem(last=False)
        return self._people[key]

    def tokens(self, key: str) -> torch.Tensor:
        """Style tokens [1, 8, C] of a person, encoded on first use only."""
        if key in self._tokens:
            self._tokens.move_to_end(key)
        else:
            self._tokens[key] = self.synthesizer.encode([self.person(key)])
            while len(self._tokens) > self.cache_size:
                self._tokens.popitem(last=False)
        return self._tokens[key]

    def forget(self) -> None:
        """Drop the cached prepared people and tokens (uploads stay)."""
        with self._lock:
            self._people.clear()
            self._tokens.clear()

    def add_upload(self, image_path: str | Path, parsing_path: str | Path) -> str:
        """An uploaded image and its parsing PNG (merged ids 0..7, same size as the image) -> person key.

        Both are resized to the prepared size as ``casd generate`` does; a file
        that is not an image, a parsing of another size or with other labels is
        a :class:`DataError` naming the uploaded file.
        """
        image_path, parsing_path = Path(image_path), Path(parsing_path)
        sizes = []
        for path, what in ((image_path, "image"), (parsing_path, "parsing PNG")):
            try:
                with Image.open(path) as img:
                    sizes.append(img.size)
            except (OSError, ValueError):
                raise DataError(path.name, f"not an image file (expected the person's {what})") from None
        if sizes[0] != sizes[1]:
            raise DataError(parsing_path.name, f"parsing is {sizes[1][0]}x{sizes[1][1]} pixels but the image "
                                               f"{image_path.name} is {sizes[0][0]}x{sizes[0][1]}: they must match")
        try:
            person = self.synthesizer.person(str(image_path), parsing=parsing_path)
        except DataError as e:  # name the file as the user called it, not the server's temporary copy
            raise DataError(Path(e.path).name, e.problem) from None
        digest = hashlib.sha1(image_path.read_bytes() + parsing_path.read_bytes()).hexdigest()[:10]
        key = f"{UPLOAD_PREFIX}{image_path.stem}-{digest}"
        with self._lock:
            self._uploads[key] = (person, image_path.name, parsing_path.name)
        return key

    def uploaded_keys(self) -> list[str]:
        return list(self._uploads)

    def upload_files(self, key: str) -> tuple[str, str] | None:
        """(image file name, parsing file name) of an uploaded person, None for a prepared one."""
        entry = self._uploads.get(key)
        return None if entry is None else entry[1:]

    def keypoints(self, name: str) -> np.ndarray:
        return self.synthesizer.keypoints(name).numpy().astype(np.int64)

    # ---- one interaction

    @torch.no_grad()
    def render(self, choice: Choice) -> Rendered:
        """The chosen people's (cached) tokens, edited, decoded in the chosen pose: one decoder call."""
        for region in choice.donors:
            control.region_indices(region)
        with self._lock:
            start = time.perf_counter()
            tokens = self.tokens(choice.source)
            if choice.donors:
                tokens = control.swap_tokens(tokens, {r: self.tokens(d) for r, d in choice.donors.items()})
            if choice.mix:
                tokens = control.mix_tokens(tokens, self.tokens(choice.mix), choice.alpha, choice.mix_regions)
            images, parsing = self.synthesizer.render([torch.as_tensor(choice.keypoints)], tokens)
            picture = visuals.to_uint8(images[0])
            seconds = time.perf_counter() - start
        return Rendered(picture, parsing[0].cpu().numpy(), seconds)

    # ---- what the page shows and offers for download

    def respond(self, choice: Choice, target_name: str | None, out_dir: str | Path,
                params: str | None = None) -> Response:
        """One interaction: render, then the panels, the files to download and the command line.

        ``target_name``: the image the pose was taken from; the command names it
        while the pose is unedited, else the written ``pose.json``.
        """
        with self._lock:
            rendered = self.render(choice)
            self._answered += 1
            folder = Path(out_dir) / f"{self._answered:05d}"
            edited = not target_name or not np.array_equal(self.keypoints(target_name), choice.keypoints)
            panels = self.panels(choice, rendered)
            files = [visuals.save_png(rendered.image, folder / "result.png"),
                     visuals.save_png(self.strip(choice, panels), folder / "strip.png"),
                     write_pose_json(folder / "pose.json", choice.keypoints)]
            return Response(self._answered, rendered, panels, files,
                            self.command_line(choice, "pose.json" if edited else target_name, params))

    def donor_panels(self, choice: Choice) -> list[tuple[str, np.ndarray]]:
        """(caption, uint8 picture) of each region's donor and of the mix partner, in command-line order."""
        return donor_panels(((region, self.person(d)) for region, d in choice.donors.items()),
                            self.person(choice.mix) if choice.mix else None, choice.alpha)

    def panels(self, choice: Choice, rendered: Rendered) -> dict[str, Any]:
        """uint8 pictures: source, target pose, donors (captioned strip or None), result, predicted parsing."""
        donors = self.donor_panels(choice)
        # donors side by side, in the order of the command line (captions would not fit small images)
        donor_strip = visuals.make_strip([p for _, p in donors], gap=2) if donors else None
        return {"source": visuals.to_uint8(self.person(choice.source).image),
                "pose": visuals.draw_skeleton(choice.keypoints, self.image_size),
                "donors": donor_strip, "result": rendered.image,
                "parsing": visuals.parsing_colours(rendered.parsing)}

    def strip(self, choice: Choice, panels: Mapping[str, Any]) -> np.ndarray:
        """source | target pose | donors | result | predicted parsing (from :meth:`panels`), enlarged, captioned."""
        return result_strip(panels["source"], panels["pose"], self.donor_panels(choice), panels["result"],
                            panels["parsing"], scale=max(1, math.ceil(192 / self.image_size[0])))

    def command_line(self, choice: Choice, pose: str, params: str | None = None) -> str:
        """The ``casd generate`` call that renders the same picture (``pose``: a name or a JSON file)."""
        words = ["casd", "generate", "--checkpoint", str(self.checkpoint or DEFAULT_CHECKPOINT)]
        if params:
            words += ["--params", str(params)]
        uploads = []

        def arg(key: str) -> str:
            files = self.upload_files(key)
            if files is None:
                return key
            uploads.append(files)
            return files[0]

        words += ["--source", arg(choice.source), "--pose", pose]
        for region, donor in choice.donors.items():
            words += ["--swap", f"{region}={arg(donor)}"]
        if choice.mix:
            words += ["--mix", arg(choice.mix), "--alpha", f"{choice.alpha:g}"]
            if choice.mix_regions:
                words += ["--regions", ",".join(choice.mix_regions)]
        for image, parsing in dict.fromkeys(uploads):
            words += ["--parsing", f"{image}={parsing}"]
        return shlex.join(words)


# --------------------------------------------------------------------------- the page






STATIC = Path(__file__).with_name("app_static")  # the page's HTML, CSS and JavaScript


def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _editor_js() -> str:
    colours = [f"rgb({r},{g},{b})" for r, g, b in visuals.LIMB_COLOURS.tolist()]
    return _static("pose_editor.js").replace("__LIMBS__", json.dumps([list(limb) for limb in LIMBS])) \
                     .replace("__COLOURS__", json.dumps(colours))


def _status(message: str, error: bool = False) -> str:
    css = "error" if error else "ok"
    return f'<div class="{css}" data-state="{css}">{html.escape(message)}</div>'


def build_ui(studio: Studio, *, params: str | None = None):
    """The page (a ``gr.Blocks``) over ``studio``. Needs the ``[app]`` extra (gradio)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import; Blocks below says it too
    try:
        import gradio as gr
    except ImportError:
        raise CasdError("casd app needs gradio: pip install -e '.[app]'") from None

    out_dir = Path(tempfile.mkdtemp(prefix="casd-app-"))  # results the page serves; gone when the process ends
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    handlers = _Handlers(gr, studio, out_dir, params)
    with gr.Blocks(title="casd app", analytics_enabled=False) as page:
        _connect(gr, _widgets(gr, studio, handlers), handlers)
    return page


_OWN_STYLE = ("(the source's own)", "")   # the donor / mix choice that keeps the source's tokens


class _Handlers:
    """What the page does on each event: returns component updates; a CasdError becomes a message."""

    def __init__(self, gr, studio: Studio, out_dir: Path, params: str | None):
        self.gr, self.studio, self.out_dir, self.params = gr, studio, out_dir, params

    # The page stays small whatever the dataset: the gallery shows one page of the search, and a name box
    # lists a few names until the user types, then the server's matches (names outside the list are accepted
    # and checked when used).
    def gallery_page(self, query: str, page: int) -> tuple[Any, list[str], int, str]:
        found = self.studio.search(query)
        pages = max(1, math.ceil(len(found) / GALLERY_PAGE))
        page = min(max(0, page), pages - 1)
        names = found[page * GALLERY_PAGE:(page + 1) * GALLERY_PAGE]
        items = [(str(self.studio.images[n]), f"{flat_stem(n)}  {flat_category(n)}".strip()) for n in names]
        return items, names, page, f"{len(found)} people · page {page + 1} of {pages}"

    def name_choices(self, typed: str = "", poses: bool = False, donor: bool = False) -> list:
        names = self.studio.search(typed, poses)[:NAME_CHOICES]
        return [_OWN_STYLE, *[(n, n) for n in names]] if donor else names

    def choice(self, source_key, editor_value, *rest) -> Choice | None:
        donors_values, (mix_key, alpha_value, regions_value) = rest[:NUM_REGIONS], rest[NUM_REGIONS:]
        if not source_key or not editor_value:
            return None
        donors = {region: d for region, d in zip(REGION_NAMES, donors_values) if d}
        return Choice(source=source_key, keypoints=editor_to_keypoints(editor_value, self.studio.image_size),
                      donors=donors, mix=mix_key or None, alpha=float(alpha_value),
                      mix_regions=list(regions_value) or None)

    def render(self, source_key, target_name, editor_value, *rest):
        nothing = (self.gr.skip(),) * 7
        try:
            choice = self.choice(source_key, editor_value, *rest)
            if choice is None:
                return (*nothing, _status("choose a source person and a target pose"))
            shown = self.studio.respond(choice, target_name, self.out_dir, self.params)
            panels = shown.panels
            message = f"rendered #{shown.number} in {shown.rendered.seconds * 1000:.0f} ms (model)"
            return (panels["source"], panels["pose"], panels["donors"], panels["result"], panels["parsing"],
                    [str(f) for f in shown.files], shown.command, _status(message))
        except CasdError as e:
            return (*nothing, _status(f"error: {e}", error=True))

    def search(self, query, page=0):
        items, names, page, label = self.gallery_page(query or "", page)
        return self.gr.update(value=items), names, page, label

    def typed_in(self, poses: bool = False, donor: bool = False):
        def on_key(key: self.gr.KeyUpData):
            return self.gr.update(choices=self.name_choices(key.input_value or "", poses, donor))
        return on_key

    def pick(self, role_value, names, evt: Any):
        """A click on the gallery: the picture's name goes into the box the role names."""
        name = names[evt.index] if evt.index is not None and evt.index < len(names) else None
        updates = [self.gr.skip()] * (3 + NUM_REGIONS)
        if name is None:
            return updates
        if role_value == "source":
            updates[0] = name
        elif role_value == "target pose":
            updates[1] = name if name in self.studio.pose_names else self.gr.skip()
        elif role_value == "mix partner":
            updates[2] = name
        else:
            updates[3 + REGION_NAMES.index(role_value.split(": ", 1)[1])] = name
        return updates

    def target(self, target_name):
        if not target_name or not self.studio.has_pose(target_name):
            return self.gr.skip(), self.gr.skip()
        kp = self.studio.keypoints(target_name)
        return keypoints_to_editor(kp, self.studio.image_size), hidden_names(kp)

    def mirror(self, editor_value):
        if not editor_value:
            return self.gr.skip(), self.gr.skip()
        size = self.studio.image_size
        kp = mirror_keypoints(editor_to_keypoints(editor_value, size), size[1])
        return keypoints_to_editor(kp, size), hidden_names(kp)

    def hidden(self, editor_value, names):
        if not editor_value:
            return self.gr.skip()
        return {**editor_value, "hidden": [name in names for name in KEYPOINT_NAMES]}

    def edited(self, editor_value):
        if not editor_value:
            return self.gr.skip()
        return [n for n, hide in zip(KEYPOINT_NAMES, editor_value.get("hidden", [])) if hide]

    def upload(self, image_file, parsing_file):
        """The uploaded person becomes the source, and a choice for donors and mixing."""
        gr = self.gr
        try:
            if image_file is None or parsing_file is None:
                raise CasdError("upload both the image and its parsing PNG first")
            key = self.studio.add_upload(image_file, parsing_file)
        except CasdError as e:
            return (*[gr.skip()] * (2 + NUM_REGIONS), _status(f"error: {e}", error=True))
        uploads = self.studio.uploaded_keys()
        others = gr.update(choices=[*self.name_choices(donor=True), *[(k, k) for k in uploads]])
        return (gr.update(choices=[*self.name_choices(), *uploads], value=key), *[others] * (1 + NUM_REGIONS),
                _status(f"uploaded {key}"))


def _widgets(gr, studio: Studio, handlers: _Handlers) -> SimpleNamespace:
    """The page's components, top to bottom (inside ``gr.Blocks``); returned by name for :func:`_connect`."""
    h, w = studio.image_size
    ui = SimpleNamespace()
    first_items, first_names, _, first_label = handlers.gallery_page("", 0)
    roles = ["source", "target pose", "mix partner"] + [f"donor: {r}" for r in REGION_NAMES]
    gr.Markdown(f"### CASD: pose transfer, try-on, head swap, style mixing  \n"
                f"checkpoint `{studio.checkpoint}` · image size {h}x{w} · {len(studio.names)} prepared people")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                ui.search = gr.Textbox(label="Search by name or category", placeholder="e.g. WOMEN Dresses",
                                       elem_id="search", scale=2)
                ui.role = gr.Dropdown(roles, value="source", label="A click on a picture sets", elem_id="role",
                                      scale=1)
            ui.gallery = gr.Gallery(value=first_items, columns=10, height=260, allow_preview=False,
                                    fit_columns=False, object_fit="contain", label="Prepared people",
                                    elem_id="gallery", elem_classes=["pixelated"])
            with gr.Row():
                ui.previous_page = gr.Button("Previous", elem_id="previous-page", size="sm")
                ui.page_label = gr.Markdown(first_label, elem_id="page-label")
                ui.next_page = gr.Button("Next", elem_id="next-page", size="sm")
            ui.shown_names, ui.page_number = gr.State(first_names), gr.State(0)
        with gr.Column(scale=2):
            ui.source = gr.Dropdown(handlers.name_choices(), value=None, label="Source person", elem_id="source",
                                    allow_custom_value=True, filterable=True)
            ui.target = gr.Dropdown(handlers.name_choices(poses=True), value=None, label="Target pose from",
                                    elem_id="target", allow_custom_value=True, filterable=True)
            with gr.Accordion("Upload a person (image + parsing PNG)", open=False, elem_id="upload"):
                ui.upload_image = gr.File(label="Image", elem_id="upload-image")
                ui.upload_parsing = gr.File(label="Parsing PNG: merged region ids 0..7, same size",
                                            elem_id="upload-parsing")
                ui.use_upload = gr.Button("Use the upload as source", elem_id="use-upload")
    with gr.Row():
        _pose_widgets(gr, ui)
        _style_widgets(gr, ui, handlers)
    _result_widgets(gr, ui, h)
    return ui


def _pose_widgets(gr, ui: SimpleNamespace) -> None:
    """The target-pose editor (a canvas of draggable joints) and its buttons."""
    with gr.Column(scale=2, min_width=300):
        ui.editor = gr.HTML(value=None, html_template=_static("pose_editor.html"),
                            css_template=_static("pose_editor.css"), js_on_load=_editor_js(), label="Target pose",
                            elem_id="pose-editor")
        with gr.Row():
            ui.reset = gr.Button("Reset pose", elem_id="reset", size="sm")
            ui.mirror = gr.Button("Mirror", elem_id="mirror", size="sm")
        ui.hidden = gr.CheckboxGroup(list(KEYPOINT_NAMES), label="Missing joints (check to hide)", elem_id="hidden")


def _style_widgets(gr, ui: SimpleNamespace, handlers: _Handlers) -> None:
    """Donors per region, the mix partner, and the Generate button with its status line."""
    with gr.Column(scale=3):
        with gr.Accordion("Donors per region (try-on: upper_clothes, pants; head swap: hair + face)", open=True):
            with gr.Row():
                ui.donor_boxes = [gr.Dropdown(handlers.name_choices(donor=True), value="", label=region,
                                              filterable=True, allow_custom_value=True, elem_id=f"donor-{region}",
                                              min_width=140)
                                  for region in REGION_NAMES]
        with gr.Row():
            ui.mix = gr.Dropdown(handlers.name_choices(donor=True), value="", label="Mix with", elem_id="mix",
                                 filterable=True, allow_custom_value=True)
            ui.alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mix amount (0 = source)", elem_id="alpha")
            ui.mix_regions = gr.CheckboxGroup(list(REGION_NAMES), label="Mix only these regions (none: all)",
                                              elem_id="mix-regions")
        ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
        ui.status = gr.HTML(_status("choose a source person and a target pose"), elem_id="status")


def _result_widgets(gr, ui: SimpleNamespace, height: int) -> None:
    """The five panels of a result, its downloads and the equivalent ``casd generate`` command."""
    with gr.Row(equal_height=True):
        picture = dict(type="numpy", format="png", interactive=False, elem_classes=["pixelated"],
                       height=max(256, 4 * height), buttons=["download"])
        ui.show_source = gr.Image(label="source", elem_id="show-source", **picture)
        ui.show_pose = gr.Image(label="target pose", elem_id="show-pose", **picture)
        ui.show_donors = gr.Image(label="donors", elem_id="show-donors", **picture)
        ui.show_result = gr.Image(label="result", elem_id="result", **picture)
        ui.show_parsing = gr.Image(label="predicted target parsing", elem_id="show-parsing", **picture)
    with gr.Row():
        ui.downloads = gr.File(label="Download: result, strip, pose JSON", file_count="multiple",
                               elem_id="downloads", interactive=False)
        ui.command = gr.Textbox(label="The same with casd generate", elem_id="command", lines=2,
                                buttons=["copy"], interactive=False)


def _connect(gr, ui: SimpleNamespace, on: _Handlers) -> None:
    """Events -> handlers: every change of a choice re-renders; typing in a name box asks the server."""
    render_inputs = [ui.source, ui.target, ui.editor, *ui.donor_boxes, ui.mix, ui.alpha, ui.mix_regions]
    render_outputs = [ui.show_source, ui.show_pose, ui.show_donors, ui.show_result, ui.show_parsing, ui.downloads,
                      ui.command, ui.status]
    gallery_outputs = [ui.gallery, ui.shown_names, ui.page_number, ui.page_label]
    ui.search.change(on.search, ui.search, gallery_outputs, trigger_mode="always_last")
    ui.previous_page.click(lambda q, n: on.search(q, n - 1), [ui.search, ui.page_number], gallery_outputs)
    ui.next_page.click(lambda q, n: on.search(q, n + 1), [ui.search, ui.page_number], gallery_outputs)
    ui.source.key_up(on.typed_in(), None, ui.source, trigger_mode="always_last")
    ui.target.key_up(on.typed_in(poses=True), None, ui.target, trigger_mode="always_last")
    for box in (*ui.donor_boxes, ui.mix):
        box.key_up(on.typed_in(donor=True), None, box, trigger_mode="always_last")

    def pick(role_value, names, evt: gr.SelectData):  # gradio finds the event by this annotation
        return on.pick(role_value, names, evt)

    ui.gallery.select(pick, [ui.role, ui.shown_names], [ui.source, ui.target, ui.mix, *ui.donor_boxes])
    ui.target.change(on.target, ui.target, [ui.editor, ui.hidden])
    ui.reset.click(on.target, ui.target, [ui.editor, ui.hidden])
    ui.mirror.click(on.mirror, ui.editor, [ui.editor, ui.hidden])
    ui.hidden.input(on.hidden, [ui.editor, ui.hidden], ui.editor)
    ui.editor.change(on.edited, ui.editor, ui.hidden).then(on.render, render_inputs, render_outputs)
    ui.generate.click(on.render, render_inputs, render_outputs)
    for box in (ui.source, *ui.donor_boxes, ui.mix, ui.mix_regions):
        box.change(on.render, render_inputs, render_outputs)
    ui.alpha.release(on.render, render_inputs, render_outputs)
    ui.use_upload.click(on.upload, [ui.upload_image, ui.upload_parsing], [ui.source, ui.mix, *ui.donor_boxes,
                                                                         ui.status])


def hidden_names(keypoints: np.ndarray) -> list[str]:
    return [n for n, kp in zip(KEYPOINT_NAMES, np.asarray(keypoints)) if (kp < 0).any()]


def write_pose_json(path: Path, keypoints: np.ndarray) -> Path:
    """Keypoints [18, 2] -> the JSON ``casd generate --pose`` reads (18 [y, x], -1 missing), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(np.asarray(keypoints).tolist()), encoding="utf-8")
    return path


def page_theme():
    """Gradio's default look with system fonts: nothing is fetched from a font service."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(studio: Studio, host: str = "127.0.0.1", port: int | None = None, *, params: str | None = None,
           block: bool = True):
    """Build and serve the page; returns the ``gr.Blocks`` (serving in the background when ``block`` is False)."""
    page = build_ui(studio, params=params)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                inbrowser=False, quiet=not block, show_error=True, theme=page_theme(), css=_static("page.css"),
                allowed_paths=sorted({str(p.parent.resolve()) for p in studio.images.values()}), ssr_mode=False,
                footer_links=[], run_history=False)
    return page


def serve(checkpoint: str | Path = DEFAULT_CHECKPOINT, *, params: str | Path | None = None,
          data_root: str | Path = DATA_ROOT, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    """``casd app``: load ``checkpoint`` and serve the page until Ctrl+C; ``params`` as in ``casd generate``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

    if not Path(checkpoint).is_file():
        raise DataError(checkpoint, "checkpoint not found (train one: dvc repro train, or pass --checkpoint)")
    params_file = params or ("params.yaml" if Path("params.yaml").is_file() else None)
    synthesizer = Synthesizer.from_checkpoint(checkpoint, params=params_file, data_root=data_root,
                                        device=device, check=bool(params))
    studio = Studio(synthesizer, checkpoint=checkpoint)
    if not studio.names:
        raise DataError(data_root, "no prepared images with parsing (run dvc repro segment first)")
    print(f"casd app: http://{host}:{port}  (Ctrl+C stops it)", flush=True)
    launch(studio, host, port, params=params, block=True)
