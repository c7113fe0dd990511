"""The dashboard in Debian's Chromium against a real serve + worker + PostgreSQL (one server for
the session; see tests/browser_fixtures.py for the seeded world)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_fixtures import (
    XSS,
    Dashboard,
    chromium,
    fresh_page,
    running_dashboard,
    send,
    sign_in,
)

SHOTS = Path(__file__).parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    async with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


@pytest.fixture(scope="session")
async def browser(dashboard: Dashboard) -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Any, dashboard: Dashboard) -> AsyncIterator[Any]:
    async with fresh_page(browser, dashboard) as fresh:
        yield fresh


async def test_sign_in_lists_the_tenants_devices_with_names_as_text(page: Any) -> None:
    await sign_in(page, "olivia")
    await page.get_by_role("link", name="Devices").first.click()
    await page.get_by_text("freezer-1").first.wait_for()
    # The injection attempt is shown as the text it is; the page fixture fails on any dialog.
    await page.get_by_text(XSS).first.wait_for()
    assert await page.locator("img[src=x]").count() == 0
    assert await page.get_by_text("globex-1").count() == 0  # another tenant's


async def test_a_user_of_another_tenant_sees_none_of_the_first_tenants_devices(page: Any) -> None:
    await sign_in(page, "gina")
    await page.get_by_role("link", name="Devices").first.click()
    await page.get_by_text("globex-1").first.wait_for()
    assert await page.get_by_text("freezer-1").count() == 0
    await page.goto("/devices/freezer-1")  # as if it did not exist
    await page.wait_for_timeout(1000)
    assert await page.get_by_text("Cold room 1").count() == 0


async def test_why_a_value_was_rejected_is_shown_with_its_payload(page: Any) -> None:
    await sign_in(page, "olivia")
    await page.goto("/devices/freezer-1")
    await page.get_by_role("tab", name="Dead letters").click()
    await page.get_by_text("out_of_range").first.wait_for()
    await page.get_by_text("6000").first.wait_for()


async def test_a_viewer_sees_no_edit_controls(page: Any, dashboard: Dashboard) -> None:
    await sign_in(page, "victor")
    await page.goto("/devices/freezer-1")
    await page.get_by_role("tab", name="Details").wait_for()
    assert await page.get_by_role("tab", name="Settings").count() == 0
    await page.get_by_role("tab", name="Details").click()
    for label in ("Rotate token", "Save", "Delete"):
        assert await page.get_by_role("button", name=label).count() == 0, label


async def test_an_alert_raised_by_a_threshold_crossing_is_acknowledged(
    page: Any, dashboard: Dashboard
) -> None:
    await sign_in(page, "olivia")
    await send(dashboard, "freezer-1", temperature=-4.0)  # over -10: the rule fires
    await page.goto("/alerts")
    card = page.get_by_role("article", name="Alert freezer too warm on freezer-1")
    await card.wait_for(timeout=15_000)
    await card.get_by_role("button", name="Acknowledge or resolve…").click()
    await card.get_by_label("Note (optional)").fill("on my way")
    await card.get_by_role("button", name="Acknowledge", exact=True).click()
    await card.get_by_text("acknowledged").first.wait_for()
    await card.get_by_text("on my way").first.wait_for()


async def test_screenshots_of_the_main_screens_light_and_dark(
    browser: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    """Every main screen renders in both themes; with TELEMETRA_SCREENSHOTS=1 the pictures
    replace those in docs/screenshots (shown in the README)."""
    shots = SHOTS if os.environ.get("TELEMETRA_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    for dark in (False, True):
        async with fresh_page(browser, dashboard, dark=dark) as page:
            await sign_in(page, "olivia")
            mode = "dark" if dark else "light"
            for name, path in (("overview", "/"), ("devices", "/devices"),
                               ("device", "/devices/freezer-1"), ("alerts", "/alerts"),
                               ("rules", "/rules")):  # fmt: skip
                await page.goto(path)
                await page.wait_for_timeout(1500)  # charts drawn (live streams never idle)
                await page.screenshot(path=str(shots / f"{name}-{mode}.png"))


async def test_the_device_chart_receives_live_points_and_reads_30_days(
    page: Any, dashboard: Dashboard
) -> None:
    await sign_in(page, "olivia")
    await page.goto("/devices/freezer-1")
    chart = page.get_by_role("img", name="Chart of temperature")
    await chart.wait_for()
    await page.get_by_text("● live").wait_for()
    before = int(await chart.get_attribute("data-points") or 0)
    await send(dashboard, "freezer-1", temperature=-16.25)
    await page.wait_for_function(
        "([n]) => Number(document.querySelector('[aria-label=\"Chart of temperature\"]')"
        ".dataset.points) > n",
        arg=[before],
    )
    assert await chart.get_attribute("data-last") == "-16.25"
    await page.get_by_label("Range").select_option(label="Last 30 days")
    await page.wait_for_function(
        "() => Number(document.querySelector('[aria-label=\"Chart of temperature\"]')"
        ".dataset.points) > 100"
    )  # 30 days of history, in buckets


async def test_a_new_rule_is_previewed_over_the_last_day_and_created(page: Any) -> None:
    await sign_in(page, "olivia")
    await page.goto("/rules/new")
    await page.get_by_label("Name").fill("humid freezer")
    await page.get_by_label("Metric").fill("humidity")
    await page.get_by_label("Value").fill("45")
    await page.get_by_text("Preview over the last 24 hours").wait_for()
    await page.get_by_text("fired").first.wait_for()  # 24 h of history cross 45 every day
    await page.get_by_role("button", name="Create rule").click()
    await page.goto("/rules")
    await page.get_by_text("humid freezer").first.wait_for()


async def test_rotating_a_token_shows_the_new_one_once_and_the_old_one_stops(
    page: Any, dashboard: Dashboard
) -> None:
    await sign_in(page, "olivia")
    await page.goto("/devices/evil-1")
    await page.get_by_role("tab", name="Settings").click()
    await page.get_by_role("button", name="Rotate token…").click()
    await page.get_by_role("button", name="Rotate now").click()
    token = (await page.get_by_test_id("new-token").inner_text()).strip()
    assert len(token) >= 32 and token != dashboard.tokens["evil-1"]
    old = dashboard.tokens["evil-1"]
    async with httpx.AsyncClient() as client:
        refused = await client.post(
            f"{dashboard.api}/ingest", json={"temperature": -20}, headers={"X-API-Key": old}
        )
        accepted = await client.post(
            f"{dashboard.api}/ingest", json={"temperature": -20}, headers={"X-API-Key": token}
        )
    assert refused.status_code == 401 and accepted.status_code < 300, (refused.text, accepted.text)


AXE = Path(__file__).parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"


async def test_axe_finds_no_serious_accessibility_violations(
    browser: Any, dashboard: Dashboard
) -> None:
    """axe-core (web's devDependencies) on every main screen, both themes; injecting it needs
    the page's CSP bypassed (the dashboard itself runs no inline script)."""
    found: list[str] = []
    for dark in (False, True):
        async with fresh_page(browser, dashboard, dark=dark, bypass_csp=True) as page:
            await sign_in(page, "olivia")
            for path in ("/", "/devices", "/devices/freezer-1", "/alerts", "/rules", "/rules/new",
                         "/admin"):  # fmt: skip
                await page.goto(path)
                await page.wait_for_timeout(1000)
                await page.add_script_tag(path=str(AXE))
                result = await page.evaluate("async () => (await axe.run()).violations")
                found += [
                    f"{path} ({'dark' if dark else 'light'}): {v['id']} ({v['impact']}): "
                    f"{v['help']} — {v['nodes'][0]['target']} {v['nodes'][0]['html'][:200]}"
                    for v in result
                    if v["impact"] in ("serious", "critical")
                ]
    assert not found, "\n".join(found)


async def test_the_quality_panel_charts_the_clock_offset_over_time(page: Any) -> None:
    await sign_in(page, "olivia")
    await page.goto("/devices/freezer-1")
    await page.get_by_role("tab", name="Quality").click()
    chart = page.get_by_role("img", name="Chart of clock offset")
    await chart.wait_for()
    assert int(await chart.get_attribute("data-points") or 0) > 100  # 7 days of hours


async def test_usable_on_a_phone_sized_screen(browser: Any, dashboard: Dashboard) -> None:
    """At 390×844 every main screen fits the width (no sideways scrolling of the page) and the
    navigation stays reachable."""
    async with fresh_page(browser, dashboard) as page:
        await page.set_viewport_size({"width": 390, "height": 844})
        await sign_in(page, "olivia")
        for path in ("/", "/devices", "/devices/freezer-1", "/alerts", "/rules", "/admin"):
            await page.goto(path)
            await page.wait_for_timeout(800)
            await page.get_by_role("navigation", name="Main").wait_for()
            overflow = await page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
