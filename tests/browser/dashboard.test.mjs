// The dashboard as a person uses it: headless Chromium against demo instances (embedded
// broker, simulated inverter, the real service), through the page's own form and buttons.
//
// The service binary: $SBC_BIN, else debug/solar-charging-backend under $CARGO_TARGET_DIR (as
// cargo resolves it: relative to the repository), else under the repository's target/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = fileURLToPath(new URL("../../", import.meta.url));
const TARGET = resolve(root, process.env.CARGO_TARGET_DIR || "target");
const BIN = process.env.SBC_BIN || resolve(TARGET, "debug/solar-charging-backend");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = process.env.SCREENSHOT; // a path: save the README's screenshot there
const SCREENSHOT_PHONE = process.env.SCREENSHOT_PHONE; // and its phone-width one there
const SCREENSHOT_PLAN = process.env.SCREENSHOT_PLAN; // and the cheapest-hours plan card's there

let base, browser;
const demos = [];

function startDemo(...extra) {
  // Port 0: the banner names the port the OS picked. `extra` may set its own speed and SOC.
  const defaults = [["--speed", "100"], ["--soc", "38"]].filter(([flag]) => !extra.includes(flag)).flat();
  const child = spawn(BIN, ["demo", "--port", "0", ...defaults, ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  demos.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    const guard = setTimeout(() => reject(new Error(`the demo did not start:\n${out}`)), 60_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/Dashboard:\s+(http:\/\/[^\s/]+)\//);
      if (m) {
        clearTimeout(guard);
        resolve(m[1]);
      }
    });
    child.stderr.on("data", (d) => (out += d));
    child.on("exit", (code) => reject(new Error(`the demo exited (${code}):\n${out}`)));
  });
}

before(async () => {
  base = await startDemo();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  for (const d of demos) d.kill("SIGTERM");
});

const PHONE = { width: 360, height: 740 };

async function open(opts = {}) {
  const { viewport = { width: 1100, height: 900 }, at = base, waitForSoc = true, setup } = opts;
  const page = await browser.newPage({ viewport });
  const failures = [];
  // The page never cancels a request of its own (no AbortController in it), so an aborted
  // request is one a reload or close cut off, not a failure of the service.
  page.on("requestfailed", (r) => {
    if (r.failure()?.errorText !== "net::ERR_ABORTED") failures.push(r.url());
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(at)) failures.push(`off-site: ${r.url()}`);
  });
  page.on("console", (m) => process.stderr.write(`console: ${m.text()}\n`));
  page.on("pageerror", (e) => failures.push(`script error: ${e.message}`));
  if (setup) await setup(page);
  await page.goto(`${at}/`);
  // Live data arrives from the API: the SOC shows a number.
  if (waitForSoc) await page.waitForFunction(() => /\d+ %/.test(document.getElementById("soc").textContent));
  return { page, failures };
}

async function call(method, path, body, at = base) {
  const r = await fetch(`${at}${path}`, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(r.ok, `${method} ${path}: ${r.status}`);
  return r.json();
}

/// Resolves once the page has asked for its status `n` more times (it refreshes on a timer).
function refreshes(page, n) {
  return new Promise((resolve) => {
    let seen = 0;
    const on = (r) => {
      if (r.url().endsWith("/api/charging/status") && ++seen >= n) {
        page.off("requestfinished", on);
        resolve();
      }
    };
    page.on("requestfinished", on);
  });
}

const text = (page, sel) => page.textContent(sel);

test("the page served is the dashboard file of this tree", async () => {
  const served = await (await fetch(`${base}/`, { headers: { Accept: "text/html" } })).text();
  const file = readFileSync(resolve(root, "src/http/dashboard.html"), "utf8");
  assert.equal(served, file, `${BIN} was built from another tree: build it again`);
});

test("the dashboard shows the battery, then saves a schedule through its form", async () => {
  const { page, failures } = await open();
  assert.match(await text(page, "#mqtt"), /connected/);
  await page.fill("#f-target", "77");
  await page.fill("#f-time", "03:45");
  await page.selectOption("#f-mode", "once");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  await page.waitForFunction(() => document.getElementById("s-target").textContent === "77 % at 03:45");
  assert.equal(await text(page, "#s-repeat"), "once");
  const schedule = await call("GET", "/api/charge/schedule");
  assert.equal(schedule.target_soc, 77);
  assert.equal(schedule.start_time, "03:45");
  assert.equal(schedule.mode, "once");
  assert.match(await text(page, "#next"), /^\w{3} \d{4}-\d\d-\d\d 03:45$/);
  assert.deepEqual(failures, [], "every request stays on the service and succeeds");
  await page.close();
});

test("the form shows the saved schedule with its days, and saves it back as it is", async () => {
  await call("POST", "/api/charge/schedule", {
    target_soc: 66, start_time: "04:15", mode: "recurring", enabled: false, days: ["mon", "wed", "sat"],
  });
  const { page, failures } = await open();
  await page.waitForFunction(() => document.getElementById("f-target").value === "66");
  const form = () => page.evaluate(() => ({
    target: document.getElementById("f-target").value,
    time: document.getElementById("f-time").value,
    mode: document.getElementById("f-mode").value,
    enabled: document.getElementById("f-enabled").checked,
    days: [...document.querySelectorAll("#f-days input:checked")].map((b) => b.value),
    daysShown: !document.getElementById("f-days").hidden,
  }));
  assert.deepEqual(await form(), {
    target: "66", time: "04:15", mode: "recurring", enabled: false, days: ["mon", "wed", "sat"], daysShown: true,
  });
  // What the server holds, not a default beside it.
  assert.equal(await text(page, "#s-enabled"), "no");
  assert.match(await text(page, "#next"), /disabled/);
  assert.equal(await text(page, "#s-repeat"), "Mon, Wed, Sat");

  // Saved untouched, it stays exactly as it was.
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  let saved = await call("GET", "/api/charge/schedule");
  assert.deepEqual(
    [saved.target_soc, saved.start_time, saved.mode, saved.enabled, saved.days],
    [66, "04:15", "recurring", false, ["mon", "wed", "sat"]],
  );

  // An edit in progress survives the page's refreshes.
  await page.check("#f-days input[value=fri]");
  await page.check("#f-enabled");
  await page.fill("#f-target", "72");
  await refreshes(page, 2);
  assert.deepEqual((await form()).days, ["mon", "wed", "fri", "sat"]);
  assert.equal((await form()).target, "72");
  await page.click("#save");
  await page.waitForFunction(() => /^Schedule saved: next run /.test(document.getElementById("msg").textContent));
  saved = await call("GET", "/api/charge/schedule");
  assert.deepEqual(
    [saved.target_soc, saved.start_time, saved.mode, saved.enabled, saved.days],
    [72, "04:15", "recurring", true, ["mon", "wed", "fri", "sat"]],
  );
  assert.match(saved.next_run, /T04:15:00$/);

  // Every day is every day: no `days` sent, none echoed.
  for (const day of ["tue", "thu", "sun"]) await page.check(`#f-days input[value=${day}]`);
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("s-repeat").textContent === "every day");
  saved = await call("GET", "/api/charge/schedule");
  assert.equal(saved.days, undefined);

  // A fresh page shows it too.
  await page.reload();
  await page.waitForFunction(() => document.getElementById("f-target").value === "72");
  assert.equal((await form()).days.length, 7);
  assert.equal((await form()).enabled, true);
  assert.deepEqual(failures, []);
  await page.close();
});

test("saving from the form keeps the schedule's fields the form does not show", async () => {
  const held = { target_soc: 80, start_time: "23:00", mode: "recurring", enabled: true, strategy: "cheapest", ready_by: "07:00",
    some_newer_option: "kept", next_run: "2026-01-16T02:00:00", is_charging: false, current_soc: 45 };
  let posted = null;
  const { page } = await open({
    setup: (p) => p.route("**/api/charge/schedule", (r) => {
      if (r.request().method() !== "POST") return r.fulfill({ json: held });
      posted = r.request().postDataJSON();
      return r.fulfill({ json: { ...held, ...posted } });
    }),
  });
  await page.waitForFunction(() => document.getElementById("f-time").value === "23:00");
  await page.fill("#f-target", "75");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  assert.deepEqual(posted, {
    some_newer_option: "kept", strategy: "cheapest", ready_by: "07:00", target_soc: 75, start_time: "23:00", mode: "recurring", enabled: true,
  });
  await page.close();
});

test("charge now shows a charge in progress, and stop ends it", async () => {
  await call("DELETE", "/api/charge/schedule");
  const { page } = await open();
  await page.fill("#now-target", "95");
  await page.click("#start");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "charging", null, { timeout: 30_000 });
  await page.waitForFunction(() => document.getElementById("started").textContent !== "—");
  assert.match(await text(page, "#target"), /95 %/);
  assert.match(await text(page, "#power"), /^\d+ W \(charging\)$/);
  if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });
  if (SCREENSHOT_PHONE) {
    await page.setViewportSize(PHONE);
    await page.screenshot({ path: SCREENSHOT_PHONE, fullPage: true });
  }
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "idle", null, { timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector("#history td").textContent !== "No charges yet", null, { timeout: 30_000 });
  assert.match(await text(page, "#history .reason"), /^Stopped$/);
  await page.close();
});

test("the dashboard's stop ends the charge and leaves a repeating schedule in place", async () => {
  const schedule = { target_soc: 90, start_time: "05:10", mode: "recurring", enabled: true, days: ["tue", "fri"] };
  await call("POST", "/api/charge/schedule", schedule);
  const { page } = await open();
  assert.match(await page.getAttribute("#stop", "title"), /schedule stays/);
  assert.match(await text(page, "#stop"), /keep schedule/);
  await page.fill("#now-target", "95");
  await page.click("#start");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "charging", null, { timeout: 30_000 });
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "idle", null, { timeout: 30_000 });
  const kept = await call("GET", "/api/charge/schedule");
  assert.ok(kept, "the schedule is still there");
  assert.deepEqual(
    [kept.target_soc, kept.start_time, kept.mode, kept.enabled, kept.days],
    [90, "05:10", "recurring", true, ["tue", "fri"]],
  );
  assert.match(kept.next_run, /T05:10:00$/);
  await page.waitForFunction(() => document.getElementById("s-repeat").textContent === "Tue, Fri");
  await page.close();
});

/// A hundred finished charges: every stop reason, long details, settings not put back.
function fullHistory() {
  const reasons = ["target_reached", "cutoff", "cancelled", "stale_data", "taper", "stalled", "write_failed",
    "external_override", "skipped", "missed", "charge_failed"];
  return Array.from({ length: 100 }, (_, i) => {
    const day = String(28 - (i % 28)).padStart(2, "0");
    const reason = reasons[i % reasons.length];
    return {
      started_at: `2026-01-${day}T01:58:45.123456`,
      ended_at: i % 7 ? `2026-01-${day}T03:12:10.000001` : `2026-02-01T00:00:10.000001`,
      origin: i % 2 ? "schedule" : "charge_now",
      target_soc: 80,
      start_soc: reason === "missed" ? null : 45,
      end_soc: reason === "missed" ? null : 80,
      stop_reason: reason,
      detail: i % 3 ? null
        : "The occurrence at 2026-01-15T02:30:00 was not run: the service was not running then (it started again at 2026-01-15T07:41:13), so the battery was not charged overnight.",
      energy_wh: reason === "missed" ? null : 4120.5,
      ...(i % 10 === 1 ? { cost: 0.412, currency: "GBP" } : {}),
      ...(i % 10 === 4 ? { restore_failures: ["ACChgStart: left at 00:00 (was 23:30)", "ACChgSOCLimit: left at 80 (was 100)"] } : {}),
    };
  });
}

test("a full history reads as sentences and fits a 360 px screen without sideways scrolling", async () => {
  const history = fullHistory();
  const { page, failures } = await open({
    viewport: PHONE,
    setup: (p) => p.route("**/api/charge/history", (r) => r.fulfill({ json: history })),
  });
  await page.waitForFunction(() => document.querySelectorAll("#history tr").length === 10);
  await page.click("#history-more");
  await page.waitForFunction(() => document.querySelectorAll("#history tr").length === 100);
  const reasons = await page.$$eval("#history .reason", (els) => els.map((e) => e.textContent));
  for (const r of ["Target reached", "Safety cutoff", "Stopped", "Skipped: already at target", "Missed", "Charge failed"]) {
    assert.ok(reasons.includes(r), `${r} is among ${[...new Set(reasons)]}`);
  }
  assert.ok(!reasons.some((r) => r.includes("_")), "no wire names shown");
  const page_text = await text(page, "#history");
  assert.match(page_text, /was not run: the service was not running then/);
  assert.match(page_text, /Not put back: ACChgStart: left at 00:00/);
  assert.match(page_text, /4\.1 kWh · 0\.41 GBP/, "a cheapest-hours charge's cost");
  assert.match(page_text, /Wed 2026-01-28 01:58/, "times in the service's wall clock, with the weekday");
  // The zone the times are in, as the service names it.
  await page.waitForFunction(() => /^in \S+, the service's time zone$/.test(document.querySelector(".note .zone").textContent));
  const widths = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: innerWidth }));
  assert.ok(widths.scroll <= widths.inner, `page is ${widths.scroll}px wide on a ${widths.inner}px screen`);
  // Rows are cards: the header row is hidden and each cell names its column.
  assert.equal(await page.isVisible("#history-table thead"), false);
  assert.equal(await page.getAttribute("#history tr:first-child td:last-child", "data-label"), "Outcome");
  assert.deepEqual(failures, []);
  await page.close();
});

test("absurd readings are never shown", async () => {
  const { page, failures } = await open({
    setup: async (p) => {
      await p.route("**/api/charging/status", async (r) => {
        const real = await (await r.fetch()).json();
        await r.fulfill({ json: { ...real, battery_power: -1e300, charging_power: 1e300, current_soc: 250, target_soc: -3 } });
      });
      await p.route("**/api/telemetry*", async (r) => {
        const real = await (await r.fetch()).json();
        real.samples = [{ at: real.until, soc: 250, battery_power: -1e300 }];
        await r.fulfill({ json: real });
      });
    },
    waitForSoc: false,
  });
  await page.waitForFunction(() => document.getElementById("charging").textContent !== "—");
  assert.equal(await text(page, "#power"), "—");
  assert.equal(await text(page, "#soc"), "—");
  assert.equal(await text(page, "#target"), "—");
  await page.waitForSelector("#chart text.empty");
  const body = await text(page, "body");
  assert.doesNotMatch(body, /e\+300|250 %|-3 %|NaN|Infinity/);
  assert.deepEqual(failures, []);
  await page.close();
});

test("the chart draws the battery's readings from the service", async () => {
  const { page, failures } = await open();
  const window = await call("GET", "/api/telemetry?hours=24");
  assert.ok(window.samples.length >= 1, JSON.stringify(window));
  // The readings: a SOC line (at least its newest point) and the power as bars.
  await page.waitForFunction(() => /^M[\d.]+,[\d.]+/.test(document.querySelector("#chart path.line")?.getAttribute("d") ?? ""));
  assert.ok((await page.$$("#chart rect")).length >= 1, "power bars");
  assert.ok(await page.isVisible("#chart circle.dot"));
  const labels = await page.$$eval("#chart text", (els) => els.map((e) => e.textContent));
  assert.ok(labels.filter((l) => /^\d\d:\d\d$/.test(l)).length >= 3, `time labels: ${labels}`);
  assert.ok(labels.includes("100%") && labels.includes("0%"), `SOC axis: ${labels}`);

  // The same function draws any series: a day of samples with a gap, and bars of any width.
  const drawn = await page.evaluate(() => {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.style.width = "600px";
    svg.style.height = "200px";
    document.body.append(svg);
    const from = Date.UTC(2026, 0, 15, 0, 0), minute = 60000;
    const line = [];
    for (let m = 0; m < 24 * 60; m += 10) if (m < 600 || m > 720) line.push({ t: from + m * minute, v: 20 + (m / 1440) * 70 });
    const bars = Array.from({ length: 48 }, (_, i) => ({ t: from + i * 30 * minute, end: from + (i + 1) * 30 * minute, v: (i % 5) - 2 }));
    drawChart(svg, {
      from, until: from + 24 * 60 * minute,
      line: { points: line, min: 0, max: 100, unit: "%", gap: 30 * minute },
      bars: { points: bars, unit: "p/kWh" },
      label: (t) => new Date(t).toISOString().slice(11, 16), align: 0,
    });
    const d = svg.querySelector("path.line").getAttribute("d");
    return {
      moves: (d.match(/M/g) || []).length,
      points: (d.match(/[ML]/g) || []).length,
      rects: svg.querySelectorAll("rect").length,
      labels: [...svg.querySelectorAll("text")].map((t) => t.textContent),
    };
  });
  assert.equal(drawn.points, 144 - 13, "every point of the line");
  assert.equal(drawn.moves, 2, "the line breaks at the gap");
  assert.equal(drawn.rects, 48);
  assert.ok(drawn.labels.includes("00:00") && drawn.labels.includes("12:00"), `${drawn.labels}`);
  assert.deepEqual(failures, []);
  await page.close();
});

test("a dongle that does not report shows as offline, not as all well", async () => {
  const offline = await startDemo("--fault", "offline");
  const { page, failures } = await open({ at: offline, waitForSoc: false });
  await page.waitForFunction(() => document.getElementById("dongle").textContent === "offline");
  assert.match(await page.getAttribute("#dongle", "class"), /\boff\b/);
  assert.match(await text(page, "#dongle-seen"), /never seen|last seen/);
  assert.doesNotMatch(await page.getAttribute("#mqtt", "class"), /\bon\b/, "a broker connection alone is not green");
  assert.ok(await page.isVisible("#banner"));
  assert.match(await text(page, "#banner"), /not reporting/);
  assert.equal(await text(page, "#soc"), "—");
  assert.deepEqual(failures, []);
  await page.close();
});

test("the notifications card shows each channel, and its test button reaches them", async () => {
  // A webhook receiver of our own; a second URL where nothing listens.
  const received = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      received.push(JSON.parse(body));
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end("{}");
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const hook = `http://127.0.0.1:${server.address().port}/hook`;
  const dead = await new Promise((r) => {
    const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => r(`http://127.0.0.1:${p}/gone`)); });
  });
  const at = await startDemo("--webhook", hook, "--webhook", dead);
  const { page, failures } = await open({ at });
  await page.waitForSelector("#notify-table:not([hidden])");
  assert.ok(await page.isHidden("#notify-none"));
  const rows = await page.$$eval("#notify tr", (trs) => trs.map((tr) => tr.textContent));
  assert.equal(rows.length, 2);
  assert.match(rows[0], /webhook 1 \(127\.0\.0\.1:\d+\)/);
  assert.doesNotMatch(rows[0], /\/hook/, "no full URL is shown");
  await page.click("#notify-test");
  await page.waitForFunction(() => /delivered/.test(document.getElementById("notify-msg").textContent));
  assert.match(await text(page, "#notify-msg"), /webhook 1 \(127\.0\.0\.1:\d+\): delivered/);
  assert.match(await text(page, "#notify-msg"), /webhook 2 \(127\.0\.0\.1:\d+\): .*(connect|refused)/i);
  assert.equal(received.filter((r) => r.event === "test").length, 1, "the receiver got the test once");
  await page.waitForFunction(() => document.querySelectorAll("#notify .pill").length === 2);
  const pills = await page.$$eval("#notify .pill", (ps) => ps.map((p) => p.textContent));
  assert.deepEqual(pills, ["delivered", "failed"]);
  assert.deepEqual(failures, []);
  await page.close();
  server.close();
});

test("without channels the notifications card says how to set one up", async () => {
  const { page, failures } = await open();
  await page.waitForFunction(() => !document.getElementById("notify-none").hidden);
  assert.match(await text(page, "#notify-none"), /README/);
  assert.ok(await page.isHidden("#notify-test"));
  assert.deepEqual(failures, []);
  await page.close();
});

test("the API key is asked once and kept; a dismissed prompt does not come back", async () => {
  // The service with a key: every /api/* path but health answers 401 without it.
  const KEY = "s3cret";
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  await page.route("**/api/**", (r) => {
    const path = new URL(r.request().url()).pathname;
    if (path === "/api/health" || r.request().headers()["x-api-key"] === KEY) return r.continue();
    return r.fulfill({ status: 401, json: { detail: "Not authenticated" }, headers: { "WWW-Authenticate": "Bearer" } });
  });
  const prompts = [];
  let answer = null;
  page.on("dialog", (d) => {
    prompts.push(d.message());
    return answer ? d.accept(answer) : d.dismiss();
  });
  await page.goto(`${base}/`);
  await page.waitForSelector("#key-button", { state: "visible" });
  await refreshes(page, 2);
  assert.equal(prompts.length, 1, `asked once: ${prompts}`);
  await page.reload();
  await page.waitForSelector("#key-button", { state: "visible" });
  await refreshes(page, 1);
  assert.equal(prompts.length, 1, "not asked again after a reload");
  assert.equal(await text(page, "#soc"), "—");

  answer = KEY;
  await page.click("#key-button");
  await page.waitForFunction(() => /\d+ %/.test(document.getElementById("soc").textContent));
  assert.equal(prompts.length, 2);
  assert.equal(await page.evaluate(() => localStorage.getItem("apiKey")), KEY);
  await page.waitForSelector("#key-button", { state: "hidden" });
  await page.reload();
  await page.waitForFunction(() => /\d+ %/.test(document.getElementById("soc").textContent));
  assert.equal(prompts.length, 2, "the kept key is used without asking");
  await page.close();
});

test("the dashboard and the API docs link to each other", async () => {
  const { page } = await open();
  await page.click("header a[href='/docs']");
  await page.waitForSelector(".swagger-ui .info");
  // Swagger UI opens the description's links in a new tab.
  const link = page.locator(".swagger-ui .info a[href='/']");
  const opened = (await link.getAttribute("target")) === "_blank" ? page.waitForEvent("popup") : Promise.resolve(page);
  await link.click();
  const dashboard = await opened;
  await dashboard.waitForFunction(() => /\d+ %/.test(document.getElementById("soc")?.textContent ?? ""));
  await page.context().close();
});

test("the page fits a phone screen without sideways scrolling", async () => {
  const { page } = await open({ viewport: { width: 390, height: 844 } });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `page is ${width}px wide on a 390px screen`);
  await page.close();
});

// ---- Cheapest hours: `demo --prices sample` sets a cheapest-hours schedule over a sample day
// of prices compressed to 24 minutes (at 60x); its plan stands until the charge in the cheap
// slots, minutes after the start.

const planned = (page) => page.$$eval("#plan-chart rect", (rs) => ({
  all: rs.length,
  planned: rs.filter((r) => r.classList.contains("planned")).length,
  colours: [...new Set(rs.map((r) => getComputedStyle(r).fill))],
}));

test("the cheapest hours plan shows the day's prices, the planned slots and what they save", async () => {
  const at = await startDemo("--prices", "sample", "--speed", "60", "--soc", "42");
  const { page, failures } = await open({ at });
  await page.waitForSelector("#plan-card", { state: "visible" });
  const plan = await call("GET", "/api/charge/plan", undefined, at);
  assert.equal(plan.fallback, null, JSON.stringify(plan));
  assert.equal(plan.price_unit, "GBP/kWh");
  // The prices as bars: every slot of the window, the planned ones in their own colour.
  await page.waitForFunction(() => document.querySelectorAll("#plan-chart rect.planned").length > 0);
  const bars = await planned(page);
  assert.ok(bars.all >= 40, `bars: ${JSON.stringify(bars)}`);
  assert.ok(bars.planned >= 10 && bars.planned < bars.all, `planned: ${JSON.stringify(bars)}`);
  assert.equal(bars.colours.length, 2, `planned and other slots differ: ${bars.colours}`);
  assert.equal(
    await page.$eval("#plan-chart rect.planned title", (t) => /^\d\d:\d\d–\d\d:\d\d: 0\.\d+ GBP\/kWh, planned$/.test(t.textContent)),
    true,
  );
  // The expected SOC as a line, the price axis in decimals, times on the service's clock.
  assert.match(await page.getAttribute("#plan-chart path.line", "d"), /^M[\d.]+,[\d.]+L/);
  const labels = await page.$$eval("#plan-chart text", (els) => els.map((e) => e.textContent));
  assert.ok(labels.includes("0.00") && labels.includes("100%"), `axes: ${labels}`);
  const times = labels.filter((l) => /^\d\d:\d\d$/.test(l)).sort();
  assert.ok(times.length >= 3, `time labels: ${labels}`);
  assert.ok(times[0] >= plan.window.from.slice(11, 16) && times[times.length - 1] <= plan.window.until.slice(11, 16),
    `${times} within the window ${JSON.stringify(plan.window)}`);
  // What it costs and saves, in the feed's currency.
  const saves = await text(page, "#plan-saves");
  const m = saves.match(/^Saves (\d+\.\d\d) GBP vs charging at the start time \((\d+\.\d\d) GBP\)$/);
  assert.ok(m, saves);
  assert.ok(Number(m[1]) > 0.1, saves);
  assert.match(await text(page, "#plan-cost"), /^\d+\.\d\d GBP$/);
  assert.match(await text(page, "#plan-prices"), /^GBP\/kWh, from sample, fetched /);
  assert.equal(await text(page, "#plan-unit"), "GBP/kWh");
  assert.match(await text(page, "#plan-window"), /^\w{3} \d{4}-\d\d-\d\d \d\d:\d\d → (\w{3} \d{4}-\d\d-\d\d )?\d\d:\d\d$/);
  assert.match(await text(page, "#plan-target"), /^80 % by \d\d:\d\d \(from 42 %, 3\.8 kWh to charge at 300 kW\)$/);
  assert.ok(await page.isHidden("#plan-fallback"), "a price-based plan");
  // The schedule card says what the demo set.
  assert.match(await text(page, "#s-target"), /^80 % by \d\d:\d\d, cheapest hours from \d\d:\d\d$/);
  if (SCREENSHOT_PLAN) await page.locator("#plan-card").screenshot({ path: SCREENSHOT_PLAN });
  // Readable on a phone: no sideways scrolling, the chart within the card.
  await page.setViewportSize(PHONE);
  await page.waitForFunction(() => document.documentElement.scrollWidth <= innerWidth);
  const chart = await page.evaluate(() => document.getElementById("plan-chart").getBoundingClientRect().right);
  assert.ok(chart <= PHONE.width, `the chart ends at ${chart}px`);
  assert.deepEqual(failures, [], "every request stays on the service and succeeds");
  await page.close();
});

test("a fallback plan says prominently that it is not price-based", async () => {
  const { page, failures } = await open({
    setup: (p) => p.route("**/api/charge/plan", (r) => r.fulfill({
      json: {
        strategy: "cheapest", window: { from: "2026-01-15T23:00:00", until: "2026-01-16T07:00:00" }, target_soc: 80,
        soc_at_planning: 45, energy_needed_kwh: 3.5, charge_kw: 3.6, charge_kw_source: "learned",
        slots: [{ start: "2026-01-15T23:00:00", end: "2026-01-16T05:50:00", price: null, planned: false },
          { start: "2026-01-16T05:50:00", end: "2026-01-16T07:00:00", price: null, planned: true }],
        planned_cost: null, fixed_start_cost: null, currency: "GBP", price_unit: "GBP/kWh", price_source: "octopus_agile",
        prices_fetched_at: "2026-01-15T16:05:12.000001",
        expected_soc: [{ at: "2026-01-15T23:00:00", soc: 45 }, { at: "2026-01-16T05:50:00", soc: 45 }, { at: "2026-01-16T06:50:00", soc: 80 }, { at: "2026-01-16T07:00:00", soc: 80 }],
        feasible: true,
        fallback: "octopus_agile: HTTP 503: charging continuously from the latest start that still reaches the target",
      },
    })),
  });
  await page.waitForSelector("#plan-card", { state: "visible" });
  assert.ok(await page.isVisible("#plan-fallback"));
  assert.equal(await text(page, "#plan-fallback"),
    "Not price-based. Octopus_agile: HTTP 503: charging continuously from the latest start that still reaches the target.");
  assert.equal(await page.getAttribute("#plan-fallback", "role"), "alert");
  assert.ok(await page.isHidden("#plan-saves"), "no savings without costs");
  assert.equal(await text(page, "#plan-cost"), "—");
  assert.match(await text(page, "#plan-target"), /at 3\.6 kW \(learned\)/);
  assert.match(await text(page, "#plan-window"), /^Thu 2026-01-15 23:00 → Fri 2026-01-16 07:00$/);
  assert.equal((await page.$$("#plan-chart rect")).length, 0, "no prices, no bars");
  assert.ok(await page.isVisible("#plan-chart path.line"));
  assert.deepEqual(failures, []);
  await page.close();
});

test("the form saves a cheapest hours schedule with its ready-by time and shows it back", async () => {
  const at = await startDemo("--prices", "sample", "--speed", "60");
  let { page, failures } = await open({ at });
  // The demo's own schedule, as the server holds it.
  const held = await call("GET", "/api/charge/schedule", undefined, at);
  assert.equal(held.strategy, "cheapest");
  await page.waitForFunction((r) => document.getElementById("f-ready").value === r, held.ready_by);
  assert.equal(await page.inputValue("#f-strategy"), "cheapest");
  assert.ok(await page.isVisible("#f-ready"));
  assert.equal(await text(page, "#f-time-name"), "Earliest start");
  // Ready-by is for cheapest hours only.
  await page.selectOption("#f-strategy", "fixed");
  assert.ok(await page.isHidden("#f-ready"));
  assert.equal(await text(page, "#f-time-name"), "Start time");
  await page.selectOption("#f-strategy", "cheapest");
  assert.ok(await page.isVisible("#f-ready"));

  await page.fill("#f-target", "70");
  await page.fill("#f-time", "22:30");
  await page.fill("#f-ready", "06:15");
  await page.selectOption("#f-mode", "recurring");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  let saved = await call("GET", "/api/charge/schedule", undefined, at);
  assert.deepEqual(
    [saved.target_soc, saved.start_time, saved.mode, saved.strategy, saved.ready_by],
    [70, "22:30", "recurring", "cheapest", "06:15"],
  );
  await page.waitForFunction(() => document.getElementById("s-target").textContent === "70 % by 06:15, cheapest hours from 22:30");
  // The plan follows: tonight's window.
  await page.waitForFunction(() => / 22:30 → .* 06:15$/.test(document.getElementById("plan-window").textContent));
  assert.deepEqual(failures, []);
  await page.close();

  // A fresh page shows it back (a reload would cut off the refresh under way).
  ({ page, failures } = await open({ at }));
  await page.waitForFunction(() => document.getElementById("f-ready").value === "06:15");
  assert.equal(await page.inputValue("#f-strategy"), "cheapest");
  assert.equal(await page.inputValue("#f-time"), "22:30");
  assert.equal(await page.inputValue("#f-target"), "70");

  // A ready-by time equal to the start is refused: the service's reason is shown.
  await page.fill("#f-ready", "22:30");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").className === "err");
  assert.match(await text(page, "#msg"), /^ready_by: /);
  saved = await call("GET", "/api/charge/schedule", undefined, at);
  assert.equal(saved.ready_by, "06:15", "nothing changed");

  // Back to a fixed start: no strategy or ready-by is kept, and the plan card goes.
  await page.selectOption("#f-strategy", "fixed");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  saved = await call("GET", "/api/charge/schedule", undefined, at);
  assert.equal(saved.strategy, undefined);
  assert.equal(saved.ready_by, undefined);
  await page.waitForSelector("#plan-card", { state: "hidden" });
  assert.deepEqual(failures, []);
  await page.close();
});

test("without a cheapest hours schedule there is no plan card", async () => {
  await call("POST", "/api/charge/schedule", { target_soc: 75, start_time: "02:00", mode: "recurring" });
  const { page, failures } = await open();
  await refreshes(page, 2);
  assert.equal(await call("GET", "/api/charge/plan"), null);
  assert.ok(await page.isHidden("#plan-card"));
  assert.ok(await page.isHidden("#f-ready"), "no ready-by for a fixed start");
  assert.equal(await page.inputValue("#f-strategy"), "fixed");
  // This demo has no prices or battery capacity: a cheapest schedule is refused, with the key
  // to set, shown as the page shows errors.
  await page.selectOption("#f-strategy", "cheapest");
  await page.fill("#f-ready", "07:00");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").className === "err");
  assert.match(await text(page, "#msg"), /^strategy: .*battery\.capacity_kwh/);
  assert.ok(await page.isHidden("#plan-card"));
  assert.deepEqual(failures, []);
  await page.close();
});
