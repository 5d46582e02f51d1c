"""The monitor in a real browser (Debian's headless Chromium through Selenium): operators log in
with password and TOTP, see live data move, acknowledge and close an alert case with its cause,
open the planning report and download it as CSV, and are refused what their role may not see.
Screenshots go to the artefacts folder (and the overview to docs/img/ for the README when it is
missing or SUIDO_SCREENSHOTS=1)."""
import csv
import io
import os
import shutil
import time

import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from suite import TOP, wait_until

from test_access import curve_push, service_keys


def until(driver, pred, timeout=20):
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(WebDriverException,)).until(lambda d: pred(d))


def click(driver, css):
    """Clicks what css selects, again if the page redrew it meanwhile."""
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() is None)


def shot(driver, env, name):
    path = env.artefacts / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def log_in(driver, env, ident):
    driver.delete_all_cookies()
    driver.get(env.url + "/login")
    until(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    driver.find_element(By.ID, "operator").send_keys(ident)
    driver.find_element(By.ID, "password").send_keys(env.passwords[ident])
    driver.find_element(By.ID, "totp").send_keys(env.code(ident))
    driver.find_element(By.ID, "submit").click()
    # the registry checks the password with Argon2id, which takes seconds under ASan on a busy
    # machine: a generous ceiling, not a speed requirement
    until(driver, lambda d: d.current_url.endswith("/overview"), timeout=90)
    until(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def send_alert(env, cleared=False, value=0.3):
    pb = env.pb
    a = pb.Alert(id="gw-0002/reservoir.level/limit", gateway_id="gw-0002", site="reservoir-02",
                 channel="reservoir.level", rule="limit_ll", severity=pb.SEVERITY_ALARM,
                 value=value, limit=0.5, timestamp_ms=int(time.time() * 1000),
                 evidence=f"{value} m below LL 0.5", cleared=cleared)
    frame = pb.StageMessage(topic="suido/v1/alerts/reservoir-02", alert=a).SerializeToString()
    s = env.suite
    curve_push(s, s.base + 2, "archive", service_keys(s, "anomaly"), frame)


def test_an_operator_logs_in_with_totp_and_sees_live_data(monitor_env, browser):
    env = monitor_env
    env.operator("olga", "operator")
    # a wrong code is refused on the form itself
    browser.delete_all_cookies()
    browser.get(env.url + "/login")
    until(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    browser.find_element(By.ID, "operator").send_keys("olga")
    browser.find_element(By.ID, "password").send_keys(env.passwords["olga"])
    browser.find_element(By.ID, "totp").send_keys("000000")
    click(browser, "#submit")
    until(browser, lambda d: "wrong" in text(d, "#message"))
    assert browser.current_url.endswith("/login")

    log_in(browser, env, "olga")
    until(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-gateways") == "4")
    rows = browser.find_elements(By.CSS_SELECTOR, "#gateways tbody tr[data-gateway]")
    assert sorted(r.get_attribute("data-gateway") for r in rows) == \
        ["gw-0001", "gw-0002", "gw-0003", "gw-0004"]
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "td.online .pill.ok")) == 4, 30)
    assert text(browser, "#operator") == "olga" and text(browser, "#role") == "operator"
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav#nav a")]
    assert "Commands" in nav and "Audit log" not in nav
    shot(browser, env, "overview")

    # live trends: the reading count of the period grows while the page is open
    browser.get(env.url + "/trends?gateway=gw-0002&channel=reservoir.level")
    until(browser, lambda d: d.find_element(By.ID, "readings").get_attribute("data-count"))
    first = int(browser.find_element(By.ID, "readings").get_attribute("data-count"))
    first_ts = int(browser.find_element(By.ID, "latest").get_attribute("data-ts"))
    until(browser, lambda d: int(d.find_element(By.ID, "readings").get_attribute("data-count"))
          > first, 40)
    until(browser, lambda d: int(d.find_element(By.ID, "latest").get_attribute("data-ts"))
          > first_ts, 40)
    # the profile's limits are drawn: LL 0.5, L 1, H 9, HH 9.5 for reservoir.level
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.chart text.limit-label")]
    assert labels == ["HH 9.5", "H 9", "L 1", "LL 0.5"]
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.mean")
    shot(browser, env, "trends")
    assert wait_until(lambda: [r for r in env.audit("monitor_view") if r[1] == "/trends"], 10)
    assert [r for r in env.audit("monitor_login") if r[2] == "olga"]


def test_an_alert_is_acknowledged_and_closed_with_its_cause(monitor_env, browser):
    env = monitor_env
    env.operator("omar", "operator")
    send_alert(env)
    log_in(browser, env, "omar")
    browser.get(env.url + "/alerts")
    row = "#cases tr[data-alert='gw-0002/reservoir.level/limit']"
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    # the live stream shows it too (the archive published it after the commit)
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR,
                                             "#feed li[data-alert='gw-0002/reservoir.level/limit']"))
    click(browser, row)
    until(browser, lambda d: d.find_elements(By.ID, "ack"))
    assert browser.find_element(By.ID, "close").get_attribute("disabled") is not None  # still active
    click(browser, "#ack")
    until(browser, lambda d: "Acknowledged" in text(d, "#action-message"))
    until(browser, lambda d: "acknowledged" in text(d, row + " td.state"))

    send_alert(env, cleared=True)
    until(browser, lambda d: d.find_element(By.ID, "close").get_attribute("disabled") is None, 30)
    cause = "<img src=x onerror=alert(1)> float switch stuck, level read low"
    action = "freed the float switch; scheduled its replacement"
    browser.find_element(By.ID, "cause").send_keys(cause)
    browser.find_element(By.ID, "action").send_keys(action)
    click(browser, "#close")
    until(browser, lambda d: "Closed" in text(d, "#action-message"))
    # markup in the cause stays text: no element made of it, no script ran
    until(browser, lambda d: cause in text(d, "#case"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#detail img")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    shot(browser, env, "alerts-closed")
    rows = env.suite.query("SELECT detail FROM audit WHERE event='alert_closed' AND actor='omar'")
    assert rows and "float switch stuck" in rows[-1][0]  # committed before the answer
    assert wait_until(lambda: any("result=ok" in r[3] and r[2] == "omar"
                                  for r in env.audit("monitor_alert_close")), 10)

    # the same kind of alert again: the page shows what omar found
    send_alert(env, value=0.2)
    browser.get(env.url + "/alerts")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    click(browser, row)
    until(browser, lambda d: "float switch stuck" in text(d, "#past"))
    until(browser, lambda d: any("float switch stuck" in li.text for li in
                                 d.find_elements(By.CSS_SELECTOR, "#feed li")), 20)
    shot(browser, env, "alerts")


def test_the_planning_report_is_shown_and_downloaded_as_csv(monitor_env, browser):
    env = monitor_env
    env.operator("petra", "viewer")
    log_in(browser, env, "petra")
    browser.get(env.url + "/planning")
    until(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-report"))
    sites = {r.get_attribute("data-site")
             for r in browser.find_elements(By.CSS_SELECTOR, "#sites tbody tr[data-site]")}
    assert sites == {"treatment-01", "reservoir-02", "pumping-03", "reservoir-04"}
    assert browser.find_elements(By.CSS_SELECTOR, "#util svg rect.bar")
    shot(browser, env, "planning")
    for f in browser.downloads.glob("*"):
        f.unlink()
    click(browser, "#csv")
    assert wait_until(lambda: [f for f in browser.downloads.glob("suido-planning-*.csv")], 20), \
        list(browser.downloads.iterdir())
    path = next(browser.downloads.glob("suido-planning-*.csv"))
    assert wait_until(lambda: path.stat().st_size > 0, 10)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert {r["site"] for r in rows} == sites
    inflow = [r for r in rows if r["channel"] == "reservoir.inflow"]
    assert inflow and all(float(r["volume_m3"]) > 0 and float(r["capacity_l_s"]) == 400
                          for r in inflow)
    assert wait_until(lambda: [r for r in env.audit("monitor_report_exported") if r[2] == "petra"],
                      10)


def test_a_role_is_refused_what_it_may_not_see(monitor_env, browser):
    env = monitor_env
    env.operator("vera", "viewer")
    log_in(browser, env, "vera")
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav#nav a")]
    assert "Audit log" not in nav and "Commands" not in nav
    before = env.audit_head()
    browser.get(env.url + "/audit")
    assert "your role may not see" in browser.find_element(By.TAG_NAME, "body").text
    shot(browser, env, "refused")
    assert wait_until(lambda: [r for r in env.audit("monitor_access_denied", before)
                               if r[2] == "vera" and "path=/audit" in r[3]], 10)
    # a viewer sees alert cases but gets no buttons to change them
    send_alert(env, value=0.25)
    browser.get(env.url + "/alerts")
    row = "#cases tr[data-alert='gw-0002/reservoir.level/limit']"
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    click(browser, row)
    until(browser, lambda d: d.find_elements(By.ID, "past"))
    assert not browser.find_elements(By.ID, "ack")


def test_an_admin_sees_commands_and_the_audit_chain_checked(monitor_env, browser):
    env = monitor_env
    env.operator("ada", "admin")
    s = env.suite
    s.ctl("command", "gw-0003", "pump1", "1", "--unit", "1", "--reason", "browser test")
    log_in(browser, env, "ada")
    browser.get(env.url + "/commands")
    until(browser, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#commands tbody tr")
                              if "gw-0003" in r.text and "pump1" in r.text])
    shot(browser, env, "commands")
    browser.get(env.url + "/audit")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#audit tbody tr[data-event]"))
    click(browser, "#check")
    until(browser, lambda d: "intact" in text(d, "#chain"))
    shot(browser, env, "audit")
    # the overview as an admin sees it, with a case open, for the README
    browser.get(env.url + "/overview")
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "td.online .pill.ok")) == 4, 30)
    until(browser, lambda d: text(d, "#card-alerts .v") != "0")
    overview = shot(browser, env, "overview-admin")
    doc = TOP / "docs" / "img" / "monitor-overview.png"
    if not doc.exists() or os.environ.get("SUIDO_SCREENSHOTS") == "1":
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, doc)
    assert wait_until(lambda: [r for r in env.audit("monitor_audit_checked") if r[2] == "ada"], 10)
