"""The page at ``/`` in a real browser: Debian's headless chromium driven by selenium (chromedriver), started
here, with every host but 127.0.0.1 unresolvable (the page must work offline). The test chooses an image file as
a person would and reads the result from the page: the top classes with their bars, the boxes listed and drawn."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from mobilenets.serve.app import create_app  # noqa: E402
from mobilenets.serve.client import Client  # noqa: E402
from mobilenets.serve.model import open_model  # noqa: E402
from mobilenets.serve.server import background  # noqa: E402
from serve_models import classifier, dense, encoded, picture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("page")
    mp.setenv("MOBILENETS_CACHE", str(path / "cache"))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,900", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def choose(browser, url: str, path) -> None:
    browser.get(url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "result").get_attribute("data-state") == "done", \
        browser.find_element(By.ID, "status").text


def test_page_classifies_an_uploaded_image(browser, folder):
    ckpt = folder / "cls.safetensors"
    classifier(ckpt)
    image = folder / "photo.png"
    image.write_bytes(encoded(picture(1)))
    with background(create_app(open_model(ckpt, "onnxruntime", threads=1), decode_threads=1)) as url:
        status, want = Client(url).predict(image.read_bytes(), "image/png", top_k=5)
        choose(browser, url, image)
        rows = browser.find_elements(By.CSS_SELECTOR, "#top li")
        assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == [t["class"] for t in want["top"]]
        shown = [float(r.find_element(By.CLASS_NAME, "num").text.rstrip("%")) for r in rows]
        assert shown == pytest.approx([100 * t["probability"] for t in want["top"]], abs=0.051)
        widths = [r.find_element(By.CSS_SELECTOR, ".bar > span").size["width"] for r in rows]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # bars follow the scores
        assert "round trip" in browser.find_element(By.ID, "latency").text
        assert "classify" in browser.find_element(By.ID, "meta").text
        browser.save_screenshot(str(folder / "classify.png"))


def test_page_draws_detections(browser, folder):
    ckpt = folder / "det.safetensors"
    dense(ckpt, "detect")
    image = folder / "scene.png"
    image.write_bytes(encoded(picture(7, (90, 70))))
    with background(create_app(open_model(ckpt, "onnxruntime", threads=1), decode_threads=1)) as url:
        status, want = Client(url).predict(image.read_bytes(), "image/png")
        assert status == 200 and want["detections"]
        choose(browser, url, image)
        canvas = browser.find_element(By.ID, "canvas")
        assert canvas.is_displayed() and canvas.get_attribute("width") == "90"
        items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
        assert [i.split(" ")[0] for i in items] == [d["class"] for d in want["detections"]]
        # the first box's outline is drawn in its colour on the canvas
        x1, y1, x2, y2 = want["detections"][0]["box"]
        pixel = browser.execute_script(
            "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)",
            canvas, int(round((x1 + x2) / 2)), int(round(y1)))
        original = picture(7, (90, 70))[int(round(y1)), int(round((x1 + x2) / 2))].tolist()
        assert pixel[:3] != original
        browser.save_screenshot(str(folder / "detect.png"))


def test_page_overlays_the_mask(browser, folder):
    import base64
    import io

    import numpy as np
    from PIL import Image

    ckpt = folder / "seg.safetensors"
    dense(ckpt, "segment")
    image = folder / "seg.png"
    original = picture(9, (90, 70))
    image.write_bytes(encoded(original))
    with background(create_app(open_model(ckpt, "onnxruntime", threads=1), decode_threads=1)) as url:
        status, want = Client(url).predict(image.read_bytes(), "image/png")
        assert status == 200 and want["classes"]
        choose(browser, url, image)
        items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
        assert [i.rsplit(" ", 1)[0] for i in items] == list(want["classes"])
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(want["mask"]))))
        canvas = browser.find_element(By.ID, "canvas")
        shown = np.array(browser.execute_script(
            "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
            canvas), dtype=np.int16).reshape(70, 90, 4)[..., :3]
        changed = np.abs(shown - original).max(-1) > 8
        assert (mask != 0).any() and changed[mask != 0].mean() > 0.9  # the overlay lies on the mask's classes
        assert not (mask == 0).any() or changed[mask == 0].mean() < 0.1  # and not on the background
        browser.save_screenshot(str(folder / "segment.png"))
