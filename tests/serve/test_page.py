"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Load the page from a running server, upload a synthetic photo, wait for the drawing, and check the item
list against the API's answer, the page's own COCO RLE decoder against pycocotools, the score slider
(filters without a new request), and the drawn canvas against the photo. The screenshot lands in the
test's temporary folder (its path is printed). Skips, saying why, where Chromium, its driver or selenium
cannot be had; `.ci/run` installs them.
"""
import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from inference_support import make_checkpoint
from maskrcnn.inference.predictor import decode_mask
from serve_support import running_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# --disable-dev-shm-usage: Docker's default 64 MB /dev/shm is too small for Chromium's shared memory.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1280,900"]


def synthetic_photo(path, width=160, height=120):
    """Smooth colour waves with two solid 'garments' on them (a deterministic RGB PNG)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([127 + 100 * np.sin(xx / (7 + 2 * c) + yy / (9 + c)) for c in range(3)], axis=2)
    rgb[20:100, 30:70] = (200, 40, 60)
    rgb[50:110, 95:140] = (40, 70, 190)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium or its driver is not installed (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium; "
                                                                 "it is in the [dev] extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    downloads = tmp_path_factory.mktemp("downloads")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_page")
    checkpoint = make_checkpoint(str(folder / "tiny.pth"))
    # Random weights score about 0.33: a default threshold of 0.3 lets the page start with items shown.
    with running_server(checkpoint, "--threads", "1", "--score-thresh", "0.3", "--max-detections", "8",
                        log_dir=str(folder)) as running:
        yield running


def wait_for_state(driver, states, timeout=180):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                         in states)
    return driver.find_element("tag name", "body").get_attribute("data-state")


def canvas_pixels(driver):
    """The drawing at the photo's own size (the page's draw(1)) as an (H, W, 3) int array."""
    url = driver.execute_script("draw(1); return document.getElementById('view').toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def set_slider(driver, value):
    return driver.execute_script("const s = document.getElementById('score'); s.value = arguments[0];"
                                 "s.dispatchEvent(new Event('input')); return parseFloat(s.value);", value)


def visible_items(driver):
    """``[(tag, score)]`` of the list entries the slider keeps."""
    return [tuple(entry) for entry in driver.execute_script(
        "return [...document.querySelectorAll('#items li.item:not(.below)')]"
        ".map((li) => [li.dataset.tag, parseFloat(li.dataset.score)]);")]


def test_page_draws_the_items_of_a_dropped_photo(browser, server, tmp_path):
    photo = synthetic_photo(str(tmp_path / "street_look.png"))
    with open(photo, "rb") as file:
        status, _, body = server.upload("/predict?score_thresh=0.05", "street_look.png", file.read())
    assert status == 200
    items = json.loads(body)["items"]  # what the page asks for: every item down to the slider's 0.05
    assert len(items) == 8

    browser.get(server.url + "/")
    assert browser.title.startswith("maskrcnn")
    wait_for_state(browser, {"idle"})
    browser.find_element("id", "file2").send_keys(photo)
    assert wait_for_state(browser, {"drawn", "error"}) == "drawn", browser.find_element("id", "status").text

    # The list: every item, best first, as the API answers them; those under the slider (0.3) hidden.
    listed = browser.execute_script("return [...document.querySelectorAll('#items li.item')].map((li) =>"
                                    " [li.dataset.tag, parseFloat(li.dataset.score), li.textContent]);")
    assert [(tag, score) for tag, score, _ in listed] == [(item["tag"], item["score"]) for item in items]
    assert all(text == f"{tag}{score:.3f}" for tag, score, text in listed)
    assert float(browser.find_element("id", "score").get_attribute("value")) == 0.3  # /healthz's default
    assert visible_items(browser) == [(i["tag"], i["score"]) for i in items if i["score"] >= 0.3]

    # The page's RLE decoder, run in the browser, gives pycocotools' masks.
    for item in items:
        decoded = browser.execute_script(
            "const [h, w] = arguments[0].size, m = maskCanvas(arguments[0], [255, 0, 0]), out = new Array(h * w)"
            ".fill(0); if (m.empty) return out; const d = m.canvas.getContext('2d').getImageData(0, 0, "
            "m.canvas.width, m.canvas.height).data; for (let y = 0; y < m.canvas.height; y++) for (let x = 0; "
            "x < m.canvas.width; x++) if (d[(y * m.canvas.width + x) * 4 + 3]) out[(y + m.y) * w + x + m.x] = 1;"
            "return out;", item["segmentation"])
        expected = decode_mask(item["segmentation"])
        assert np.array_equal(np.array(decoded, dtype=bool).reshape(expected.shape), expected), item["tag"]

    # The slider filters the list and the drawing without a new request.
    requests_before = server.json("/healthz")["queue"]["images"]
    cut = set_slider(browser, sorted(i["score"] for i in items)[4] + 1e-9)  # quantized to the 0.01 step
    assert visible_items(browser) == [(i["tag"], i["score"]) for i in items if i["score"] >= cut]
    shown = [i for i in items if i["score"] >= cut]
    assert "item(s) scoring at least" in browser.find_element("id", "status").text
    drawn = canvas_pixels(browser)
    set_slider(browser, 1.0)
    assert visible_items(browser) == []
    bare = canvas_pixels(browser)
    photo_pixels = np.asarray(Image.open(photo)).astype(int)
    assert bare.shape == drawn.shape == photo_pixels.shape  # the canvas is the photo's own size
    assert np.abs(bare - photo_pixels).max() <= 2  # nothing drawn at 1.0: the photo itself
    if shown:
        union = np.any([decode_mask(i["segmentation"]) for i in shown], axis=0)
        changed = np.abs(drawn - photo_pixels).max(axis=2) > 2
        assert changed[union].mean() > 0.95  # the masks are painted
        near_any_box = np.zeros_like(union)
        for item in shown:  # boxes, their outlines and the tags above them (17 px, font 13)
            x1, y1, x2, y2 = item["box"]
            near_any_box[max(0, int(y1) - 18):int(y2) + 3, max(0, int(x1) - 2):int(max(x2, x1 + 90)) + 3] = True
        assert not changed[~near_any_box].any()  # nothing is drawn elsewhere
    assert server.json("/healthz")["queue"]["images"] == requests_before  # no new request

    # "Download JSON" saves the document with the items the slider keeps.
    cut = set_slider(browser, 0.3)
    browser.find_element("id", "download").click()
    saved = browser.downloads / "street_look.json"
    for _ in range(100):
        if saved.exists() and saved.stat().st_size:
            break
        time.sleep(0.1)
    assert json.loads(saved.read_text()) == {"width": 160, "height": 120,
                                             "items": [i for i in items if i["score"] >= cut]}

    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 1000
    print(f"screenshot: {screenshot}")


def test_page_shows_the_servers_error(browser, server, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("shopping list: a dress, a bag")
    browser.get(server.url + "/")
    wait_for_state(browser, {"idle"})
    browser.find_element("id", "file2").send_keys(str(not_a_photo))
    assert wait_for_state(browser, {"drawn", "error"}) == "error"
    text = browser.find_element("id", "status").text
    assert "Could not process notes.jpg: 400: upload 'notes.jpg' is not a readable image" in text
    assert browser.find_elements("css selector", "#items li") == []


def test_dropping_a_photo_on_the_page(browser, server, tmp_path):
    photo = synthetic_photo(str(tmp_path / "dropped.png"), width=96, height=128)
    with open(photo, "rb") as file:
        data = file.read()
    browser.get(server.url + "/")
    wait_for_state(browser, {"idle"})
    # What a drag from the desktop delivers: a drop event whose DataTransfer holds the file.
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer,"
        " bubbles: true, cancelable: true}));", base64.b64encode(data).decode())
    assert wait_for_state(browser, {"drawn", "error"}) == "drawn", browser.find_element("id", "status").text
    items = json.loads(server.upload("/predict?score_thresh=0.05", "dropped.png", data)[2])["items"]
    listed = browser.execute_script("return [...document.querySelectorAll('#items li.item')].map((li) =>"
                                    " [li.dataset.tag, parseFloat(li.dataset.score)]);")
    assert [tuple(entry) for entry in listed] == [(i["tag"], i["score"]) for i in items] and items
    assert "in dropped.png, 96x128" in browser.find_element("id", "status").text


def test_page_lists_the_attributes_of_an_attribute_model(browser, server):
    """Items of a model with an attribute head carry ``attributes`` ([{name, score}], best first): the list
    shows them after the tag; items without them read as before."""
    browser.get(server.url + "/")
    wait_for_state(browser, {"idle"})
    listed = browser.execute_script(
        "state.doc = {width: 40, height: 30, items: ["
        "  {tag: 'dress', category_id: 4, score: 0.93, box: [1, 2, 20, 25], area: 300,"
        "   attributes: [{name: 'striped', score: 0.8}, {name: 'midi', score: 0.6}]},"
        "  {tag: 'bag', category_id: 1, score: 0.5, box: [5, 5, 9, 9], area: 12, attributes: []},"
        "  {tag: 'top', category_id: 6, score: 0.4, box: [5, 5, 9, 9], area: 12}]};"
        "listItems(); return [...document.querySelectorAll('#items li.item')].map((li) =>"
        " [li.textContent, li.dataset.attributes, attributeText(state.doc.items[0])]);")
    assert listed == [["dress | striped, midi0.930", "striped,midi", " | striped, midi"],
                      ["bag0.500", "", " | striped, midi"], ["top0.400", "", " | striped, midi"]]
