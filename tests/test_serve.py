"""The web page (evaluate.serve): the API on bad and good uploads, and the page driven in headless Chromium."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from evaluate import serve as S  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a real port (uvicorn in a thread), serving a tiny landmark student; 2.5 s clip limit."""
    import torch

    from evaluate import export as E
    from models.students import build_student
    from test_infer import SPEC, STUDENT, VOCAB

    base = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    onnx = E.export_onnx(build_student(STUDENT, len(VOCAB), SPEC).eval(), SPEC, VOCAB, STUDENT.to_dict(),
                         base / "student.onnx")
    app = S.create_app(S.ServeConfig(str(onnx), beam=1, max_seconds=2.5, max_mb=5), base / "results")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/api/info", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def upload(url: str, path: Path, name: str | None = None) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name or path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/recognize", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def blank_video(path: Path, frames: int, fps: float = 25.0) -> Path:
    from test_features import write_video

    return write_video(path, np.full((frames, 96, 128, 3), 128, np.uint8), fps=fps)


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    code, data = upload(server, text)
    assert code == 415 and data["error"].startswith("notes.txt: not a video that can be read")
    assert str(tmp_path) not in data["error"]  # the user's file name, not the server's temp path
    code, data = upload(server, blank_video(tmp_path / "long.mp4", 100))  # 4 s > 2.5 s
    assert code == 413 and "long.mp4" in data["error"] and "over the 2.5 s limit" in data["error"]
    code, data = upload(server, blank_video(tmp_path / "empty_room.mp4", 8))
    assert code == 422 and "no person was found" in data["error"]
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int(5.5e6))
    code, data = upload(server, big)
    assert code == 413 and "5 MB upload limit" in data["error"]
    with urllib.request.urlopen(server + "/", timeout=10) as r:  # still serving
        assert r.status == 200 and b"Sign recognition" in r.read()


@pytest.fixture(scope="module")
def clip(shared_dir) -> Path:
    return shared_dir / "clips" / "wlasl_68011_book.mp4"


@pytest.fixture(scope="module")
def api_result(server, clip):
    code, data = upload(server, clip)
    assert code == 200, data
    return data


def test_a_real_clip_gives_timed_glosses_and_an_annotated_video(server, clip, api_result):
    data = api_result
    assert data["glosses"] == [g["gloss"] for g in data["timed"]] and data["glosses"]  # a random model still emits some
    assert all(0 <= g["start_s"] < g["end_s"] <= data["frames"] / data["fps"] + 1e-3 for g in data["timed"])
    with urllib.request.urlopen(server + data["video"], timeout=30) as r:
        assert r.headers["content-type"] == "video/mp4" and r.read(12)[4:8] == b"ftyp"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server + "/results/../../etc/passwd", timeout=10)


def _browser():
    """A headless Chromium session, installing Debian's chromium + chromium-driver when missing and allowed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
        if shutil.which("apt-get") and hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
            print("installing Debian chromium + chromium-driver for the browser test")
            cmd = "apt-get install -y -qq chromium chromium-driver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)"
            subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=900)
        if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
            pytest.skip(f"no headless browser: {CHROMIUM} / {DRIVER} missing and apt-get could not install them")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    return driver, profile


def test_the_page_in_headless_chromium(server, clip, api_result, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver, profile = _browser()
    try:
        driver.get(server + "/")
        assert "Sign recognition" in driver.title + driver.page_source
        WebDriverWait(driver, 10).until(lambda d: "Model: student.onnx" in d.find_element(By.ID, "info").text)
        # a non-video: the message appears on the page
        bad = tmp_path / "notes.txt"
        bad.write_text("hello")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "error").text)
        assert "not a video that can be read" in driver.find_element(By.ID, "error").text
        # then a real clip: glosses with their times and the annotated video
        driver.find_element(By.ID, "file").clear()
        driver.find_element(By.ID, "file").send_keys(str(clip))
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 300).until(ec.visibility_of_element_located((By.ID, "result")))
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "sentence").text == " ".join(api_result["glosses"])
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in driver.find_elements(By.CSS_SELECTOR, "#glosses tr.gloss")]
        assert rows == [[g["gloss"], f"{g['start_s']:.2f}", f"{g['end_s']:.2f}", f"{g['score']:.2f}"]
                        for g in api_result["timed"]]
        src = driver.find_element(By.ID, "overlay").get_attribute("src")
        assert "/results/" in src and src.endswith(".mp4")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
