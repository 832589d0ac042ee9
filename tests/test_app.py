"""casd.app: the pose editor's frame conversion, the Studio's cached decode, and the page in headless Chromium.

A random-init tiny generator on the tiny prepared set (64x44). The browser test
starts the app on a free 127.0.0.1 port and drives it with Selenium; every
picture the page shows is fetched back and compared with the Synthesizer's.

``CASD_APP_SCREENSHOT=docs/app.png pytest tests/test_app.py`` saves the page
after the try-on step.
"""

import io
import json
import os
import re
import shlex
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from casd import app, visuals
from casd.data.images import REGION_NAMES
from casd.data.pose import KEYPOINT_NAMES, pose_input
from casd.errors import CasdError, DataError
from casd.inference import Synthesizer
from helpers import free_port, save_tiny_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCE = "fashionWOMENBlouses_Shirtsid0000000601_1front.jpg"
TARGET = "fashionMENDenimid0000000202_7additional.jpg"
DONOR = "fashionMENDenimid0000000203_4full.jpg"
WRIST = KEYPOINT_NAMES.index("right_wrist")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_data_config):
    """A tiny generator as ``casd train`` exports it, with decoder weights large enough that inputs matter."""
    return save_tiny_generator(tmp_path_factory.mktemp("app") / "generator.pt",
                               image_size=tiny_data_config.image_size)


@pytest.fixture(scope="module")
def synthesizer(checkpoint, tiny_prepared):
    return Synthesizer.from_checkpoint(checkpoint, data_root=tiny_prepared)


@pytest.fixture()
def studio(synthesizer, checkpoint):
    return app.Studio(synthesizer, checkpoint=checkpoint)


# --------------------------------------------------------------------------- pose editor frame

def test_editor_round_trip_keeps_keypoints_and_missing_joints(synthesizer):
    kp = synthesizer.keypoints(TARGET).numpy()
    kp[3] = -1
    value = app.keypoints_to_editor(kp, synthesizer.image_size)
    scale = app.editor_scale(synthesizer.image_size)
    assert (value["height"], value["width"]) == (synthesizer.image_size[0] * scale, synthesizer.image_size[1] * scale)
    assert value["hidden"][3] and sum(value["hidden"]) == int((kp < 0).any(axis=1).sum())
    np.testing.assert_array_equal(app.editor_to_keypoints(value, synthesizer.image_size), kp)
    np.testing.assert_array_equal(app.editor_to_keypoints(json.dumps(value), synthesizer.image_size), kp)


def test_dragged_joint_reaches_the_generator_in_the_prepared_frame(studio, synthesizer, monkeypatch):
    """A drag in canvas pixels (any displayed canvas size) lands in the image pixel under it, and the
    generator's pose input has that joint's map there."""
    h, w = synthesizer.image_size
    value = app.keypoints_to_editor(synthesizer.keypoints(TARGET), synthesizer.image_size)
    # The page's canvas may be drawn at another resolution: the editor reports its own width/height.
    value = {**value, "width": 3 * w, "height": 3 * h, "points": [[p[0] * 3 / app.editor_scale(synthesizer.image_size),
                                                                   p[1] * 3 / app.editor_scale(synthesizer.image_size)]
                                                                  for p in value["points"]]}
    value["points"][WRIST] = [3 * 30 + 2.9, 3 * 50 + 0.1]     # canvas (x, y) inside image pixel (y=50, x=30)
    value["hidden"][WRIST] = False
    seen = []
    decode = synthesizer.generator.decode
    monkeypatch.setattr(synthesizer.generator, "decode", lambda pose, tokens: seen.append(pose) or decode(pose, tokens))

    kp = app.editor_to_keypoints(value, synthesizer.image_size)
    assert kp[WRIST].tolist() == [50, 30]
    studio.render(app.Choice(SOURCE, kp))
    (pose,) = seen
    assert torch.nonzero(pose[0, WRIST]).tolist() == [[50, 30]]
    expected = synthesizer.keypoints(TARGET).clone()
    expected[WRIST] = torch.tensor([50, 30])
    torch.testing.assert_close(pose, pose_input(expected[None], (h, w)), rtol=0, atol=0)


def test_mirror_swaps_sides_and_flips_x(synthesizer):
    kp = synthesizer.keypoints(TARGET).numpy()
    mirrored = app.mirror_keypoints(kp, synthesizer.image_size[1])
    left, right = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
    if (kp[right] >= 0).all():
        assert mirrored[left].tolist() == [kp[right, 0], synthesizer.image_size[1] - 1 - kp[right, 1]]
    np.testing.assert_array_equal(app.mirror_keypoints(mirrored, synthesizer.image_size[1]), kp)


# --------------------------------------------------------------------------- Studio

def test_render_equals_the_synthesizer_and_encodes_each_person_once(studio, synthesizer, monkeypatch):
    calls = []
    encode = synthesizer.generator.encode_style
    monkeypatch.setattr(synthesizer.generator, "encode_style", lambda *a: calls.append(1) or encode(*a))
    kp = synthesizer.keypoints(TARGET).numpy()
    first = studio.render(app.Choice(SOURCE, kp))
    np.testing.assert_array_equal(first.image, visuals.to_uint8(synthesizer.transfer(SOURCE, TARGET)))
    calls.clear()
    for alpha in (0.0, 0.5, 1.0):
        studio.render(app.Choice(SOURCE, app.mirror_keypoints(kp, synthesizer.image_size[1]), {"upper_clothes": DONOR},
                                 mix=TARGET, alpha=alpha, mix_regions=["hair", "face"]))
    assert len(calls) == 2  # the donor and the mix partner, once each; the source was cached
    tryon = studio.render(app.Choice(SOURCE, kp, {"upper_clothes": DONOR}))
    np.testing.assert_array_equal(tryon.image, visuals.to_uint8(synthesizer.swap(SOURCE, TARGET,
                                                                          {"upper_clothes": DONOR})))
    assert tryon.parsing.shape == tuple(synthesizer.image_size) and tryon.parsing.max() < len(REGION_NAMES)


def test_command_line_reproduces_the_picture(studio, synthesizer, checkpoint, tiny_prepared, tmp_path, monkeypatch):
    from casd.cli import main as casd_main

    kp = synthesizer.keypoints(TARGET).numpy()
    kp[WRIST] = [40, 10]
    choice = app.Choice(SOURCE, kp, {"pants": DONOR}, mix=TARGET, alpha=0.25, mix_regions=["hair"])
    pose_file = app.write_pose_json(tmp_path / "pose.json", kp)
    words = shlex.split(studio.command_line(choice, str(pose_file)))
    assert words[:2] == ["casd", "generate"]
    monkeypatch.chdir(tmp_path)
    casd_main([*words[1:], "--data-root", str(tiny_prepared), "--out", "out", "--no-strip"])
    (written,) = (tmp_path / "out").glob("*.png")
    np.testing.assert_array_equal(np.asarray(Image.open(written)), studio.render(choice).image)


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_uploads_are_checked_and_named(studio, synthesizer, tiny_prepared, tmp_path):
    image = np.asarray(Image.open(tiny_prepared / "resized" / "test" / SOURCE))
    parsing = np.asarray(Image.open(tiny_prepared / "parsing" / "test" / SOURCE.replace(".jpg", ".png")))
    (tmp_path / "notes.txt").write_text("not a picture")
    cases = {
        (tmp_path / "notes.txt", _png(tmp_path / "p.png", parsing)): "notes.txt: not an image file",
        (_png(tmp_path / "me.png", image), _png(tmp_path / "small.png", parsing[:32])): "small.png: parsing is 44x32",
        (tmp_path / "me.png", _png(tmp_path / "lip.png", np.full_like(parsing, 12))): "lip.png: region id 12 outside",
    }
    for (image_path, parsing_path), message in cases.items():
        with pytest.raises(DataError, match=message):
            studio.add_upload(image_path, parsing_path)
    key = studio.add_upload(tmp_path / "me.png", tmp_path / "p.png")
    kp = synthesizer.keypoints(TARGET).numpy()
    np.testing.assert_array_equal(studio.render(app.Choice(key, kp)).image,
                                  studio.render(app.Choice(SOURCE, kp)).image)
    assert "--parsing me.png=p.png" in studio.command_line(app.Choice(key, kp), TARGET)
    with pytest.raises(CasdError, match="unknown region"):
        studio.render(app.Choice(SOURCE, kp, {"sleeves": DONOR}))


# --------------------------------------------------------------------------- the page in Chromium



@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the app extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--window-size=1400,1700"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(synthesizer, checkpoint):
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    port = free_port()
    page = app.launch(app.Studio(synthesizer, checkpoint=checkpoint), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def _fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas calls under pandas 3
def test_page_in_headless_chromium(browser, served, synthesizer, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(served)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .thumbnail-item"))

    def status() -> str:
        return browser.find_element(By.CSS_SELECTOR, "#status [data-state]").text

    def rendered_count() -> int:
        found = re.match(r"rendered #(\d+)", status())
        return int(found.group(1)) if found else 0

    def replace_text(field, text: str) -> None:
        field.click()
        field.send_keys(Keys.CONTROL, "a")  # (a modifier stays down until the end of its send_keys call)
        field.send_keys(Keys.BACKSPACE, text)

    def pick(role: str, name: str) -> None:
        box = browser.find_element(By.CSS_SELECTOR, "#role input")
        replace_text(box, role)
        box.send_keys(Keys.ENTER)
        replace_text(browser.find_element(By.CSS_SELECTOR, "#search textarea, #search input"),
                     name.removesuffix(".jpg"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .thumbnail-item")) == 1)
        browser.find_element(By.CSS_SELECTOR, "#gallery .thumbnail-item").click()

    def generate() -> np.ndarray:
        before = rendered_count()
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: rendered_count() > before)
        return _fetch_png(browser.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src"))

    # Pose transfer: source and target picked from the searched gallery.
    pick("source", SOURCE)
    pick("target pose", TARGET)
    wait.until(lambda d: rendered_count() >= 1)
    np.testing.assert_array_equal(generate(), visuals.to_uint8(synthesizer.transfer(SOURCE, TARGET)))
    command = browser.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
    assert f"--source {SOURCE} --pose {TARGET}" in command

    # Try-on: the upper clothes from a donor.
    pick("donor: upper_clothes", DONOR)
    wait.until(lambda d: "--swap upper_clothes=" in
               d.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value"))
    tryon = generate()
    np.testing.assert_array_equal(tryon, visuals.to_uint8(synthesizer.swap(SOURCE, TARGET, {"upper_clothes": DONOR})))
    if os.environ.get("CASD_APP_SCREENSHOT"):
        browser.save_screenshot(os.environ["CASD_APP_SCREENSHOT"])

    # Drag the right wrist on the canvas: the result follows without pressing generate.
    canvas = browser.find_element(By.CSS_SELECTOR, "#pose-editor canvas")
    kp = synthesizer.keypoints(TARGET).numpy()
    assert (kp[WRIST] >= 0).all()
    css_per_pixel = canvas.rect["width"] / synthesizer.image_size[1]
    before = rendered_count()
    start = ((kp[WRIST, 1] + 0.5) * css_per_pixel - canvas.rect["width"] / 2,
             (kp[WRIST, 0] + 0.5) * css_per_pixel - canvas.rect["height"] / 2)
    target_y, target_x = 10, 5
    ActionChains(browser).move_to_element_with_offset(canvas, round(start[0]), round(start[1])).click_and_hold() \
        .move_by_offset(round((target_x - kp[WRIST, 1]) * css_per_pixel),
                        round((target_y - kp[WRIST, 0]) * css_per_pixel)).release().perform()
    wait.until(lambda d: rendered_count() > before)
    dragged = kp.copy()
    dragged[WRIST] = [target_y, target_x]
    shown = _fetch_png(browser.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src"))
    np.testing.assert_array_equal(shown, visuals.to_uint8(synthesizer.swap(SOURCE, torch.from_numpy(dragged),
                                                                     {"upper_clothes": DONOR})))
    assert "--pose pose.json" in browser.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")

    # Mirror the edited pose.
    before = rendered_count()
    browser.find_element(By.ID, "mirror").click()
    wait.until(lambda d: rendered_count() > before)
    mirrored = torch.from_numpy(app.mirror_keypoints(dragged, synthesizer.image_size[1]))
    shown = _fetch_png(browser.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src"))
    np.testing.assert_array_equal(shown, visuals.to_uint8(synthesizer.swap(SOURCE, mirrored, {"upper_clothes": DONOR})))

    # A bad upload: a message in the page, and the app keeps working.
    browser.find_element(By.CSS_SELECTOR, "#upload .label-wrap").click()
    (tmp_path / "notes.txt").write_text("not a picture")
    parsing = tmp_path / "parsing.png"
    Image.fromarray(np.zeros(synthesizer.image_size, np.uint8)).save(parsing)
    files = "#upload-image input[type=file], #upload-parsing input[type=file]"
    inputs = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, files)) == 2
                        and d.find_elements(By.CSS_SELECTOR, files))
    inputs[0].send_keys(str(tmp_path / "notes.txt"))
    inputs[1].send_keys(str(parsing))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#upload-image .file-preview, "
                                                              "#upload-parsing .file-preview")) == 2)
    browser.find_element(By.ID, "use-upload").click()
    wait.until(lambda d: "error" in status())
    assert "notes.txt: not an image file" in status()
    np.testing.assert_array_equal(generate(), shown)

    # The same upload with an image in place of the text: it becomes the source.
    browser.find_element(By.CSS_SELECTOR, "#upload-image button[aria-label=Clear]").click()
    image = str(shutil.copy(synthesizer.layout.find_image(DONOR)[0], tmp_path / "me.jpg"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-image input[type=file]"))[0].send_keys(image)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-image .file-preview"))
    before = rendered_count()
    browser.find_element(By.ID, "use-upload").click()
    wait.until(lambda d: rendered_count() > before)
    assert "--parsing me.jpg=parsing.png" in browser.find_element(By.CSS_SELECTOR, "#command textarea") \
        .get_attribute("value")
    uploaded = synthesizer.person(str(image), parsing=parsing)
    np.testing.assert_array_equal(_fetch_png(browser.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src")),
                                  visuals.to_uint8(synthesizer.swap(uploaded, mirrored, {"upper_clothes": DONOR})))

    # Offline: everything the page asked for came from this server (or is inline data).
    requested = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    outside = sorted(u for u in requested if not u.startswith((served, "data:", "blob:")))
    assert not outside, f"the page fetched from elsewhere: {outside[:5]}"
    assert len(requested) > 10


def _first_page_bytes(url: str) -> int:
    """Bytes of what a browser loads to show the page before any interaction: the HTML and the app config."""
    total = 0
    for path in ("", "config"):
        with urllib.request.urlopen(url + path, timeout=60) as response:
            total += len(response.read())
    return total


@pytest.mark.parametrize("people", [2_000, 50_000])
def test_first_page_stays_small_whatever_the_dataset(synthesizer, checkpoint, people):
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    studio = app.Studio(synthesizer, checkpoint=checkpoint)
    picture = next(iter(studio.images.values()))
    names = [f"fashion{'MEN' if i % 2 else 'WOMEN'}Denimid{i:08d}_{i % 7}front.jpg" for i in range(people)]
    studio.list_people({n: picture for n in names}, names)
    port = free_port()
    page = app.launch(studio, "127.0.0.1", port, block=False)
    try:
        size = _first_page_bytes(f"http://127.0.0.1:{port}/")
    finally:
        page.close()
    assert size <= 2_000_000, f"first page of {people} people: {size:,} bytes"
    # the page offers a page of pictures and a few names, and the server finds the rest
    assert names[-1] in studio.search(names[-1].removesuffix(".jpg"))
    assert len(studio.search("")) == people
