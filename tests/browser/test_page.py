"""The web page in a real headless browser (Debian's chromium driven by Selenium through
chromium-driver): sign in, upload, watch the stages live, play the video, find the job in
the list, and a screenshot of the finished job written and checked as a PNG."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from tests.support.http_stack import FAST, TOKENS, HttpStack
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are installed by `make up`"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required",
                 "--mute-audio"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(30)
    try:
        yield session
    finally:
        session.quit()


def wait(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """See :func:`tests.support.waiting.wait_for`."""
    return wait_for(predicate, timeout, what, every)


def text_of(browser: WebDriver, selector: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


def sign_in(browser: WebDriver, http_stack: HttpStack, tenant: str) -> None:
    browser.get(http_stack.base_url + "/")
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(TOKENS[tenant])
    browser.find_element(By.ID, "save-token").click()
    wait(lambda: text_of(browser, "#who") == f"tenant {tenant}", 10, "signed in")


def upload(browser: WebDriver, image: Path, audio: Path) -> None:
    browser.get(browser.current_url.split("#")[0] + "#/")
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.ID, "audio").send_keys(str(audio))
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    for name, value in FAST.items():
        browser.find_element(By.NAME, name).send_keys(value)
    browser.find_element(By.ID, "submit").click()


def test_upload_watch_the_stages_and_play_the_video(browser: WebDriver, http_stack: HttpStack,
                                                    tmp_path: Path) -> None:
    sign_in(browser, http_stack, "initech")
    upload(browser, http_stack.portrait, http_stack.speech)
    task_id = wait(lambda: browser.current_url.partition("#/jobs/")[2], 20, "the job page")

    # Watch it live: record every status and stage state the page shows until completed.
    statuses: list[str] = []
    states: set[tuple[str, str]] = set()

    def finished() -> bool:
        status = text_of(browser, "#job-status")
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        for item in browser.find_elements(By.CSS_SELECTOR, "#timeline li"):
            states.add((str(item.get_attribute("data-stage")),
                        str(item.get_attribute("data-state"))))
        return status in ("completed", "failed")

    wait(finished, 150, "the job to finish on the page", every=0.05)
    assert statuses[-1] == "completed", (statuses, text_of(browser, "#error"))
    assert "running" in statuses, statuses  # seen while it ran, not only at the end
    assert ("gpu", "running") in states or ("encode", "running") in states, states
    for stage in ("preprocess", "gpu", "encode", "upload"):
        assert browser.find_element(
            By.CSS_SELECTOR, f'#timeline li[data-stage="{stage}"]'
        ).get_attribute("data-state") == "done", stage
    assert browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")

    # The video plays: metadata loaded, a duration, and the playhead moving.
    video = browser.find_element(By.ID, "video")
    wait(lambda: browser.execute_script(
        "return arguments[0].readyState >= 2 && arguments[0].duration > 0", video),
        30, "the video to load")
    duration = browser.execute_script("return arguments[0].duration", video)
    assert 1.0 < duration < 30.0
    browser.execute_script("arguments[0].currentTime = 0; arguments[0].play();", video)
    start = browser.execute_script("return arguments[0].currentTime", video)
    wait(lambda: browser.execute_script("return arguments[0].currentTime", video) > start + 0.2,
         10, "the video to play")

    shot = tmp_path / "job.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
        image.verify()
    with Image.open(shot) as image:
        grey = image.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 10  # not a blank page
        assert len(grey.getcolors(maxcolors=256 * 256) or ()) > 16

    # The list finds it with a status filter; its row leads back to the job page.
    browser.get(http_stack.base_url + "/#/jobs")
    Select(browser.find_element(By.ID, "filter-status")).select_by_visible_text("completed")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    link = wait(lambda: [a for a in browser.find_elements(By.CSS_SELECTOR, "#jobs-table a")
                         if a.text == task_id], 10, "the job in the list")[0]
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
    assert all("completed" in row.text for row in rows)
    link.click()
    wait(lambda: text_of(browser, "#job-status") == "completed", 10, "the job page again")


def test_a_refused_upload_shows_its_error_code(browser: WebDriver, http_stack: HttpStack,
                                               tmp_path: Path) -> None:
    sign_in(browser, http_stack, "initech")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture\n")
    upload(browser, not_image, http_stack.speech)
    wait(lambda: "image.undecodable" in text_of(browser, "#notice"), 15, "the error notice")
    assert "#/jobs/" not in browser.current_url
