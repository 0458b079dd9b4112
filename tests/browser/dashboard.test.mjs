// The dashboard as a person uses it: headless Chromium against a demo instance (embedded
// broker, simulated inverter, the real service), through the page's own form and buttons.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";
import { chromium } from "playwright-core";

// The service binary: $SBC_BIN, else debug/solar-charging-backend under $CARGO_TARGET_DIR (as
// cargo resolves it: relative to the repository), else under the repository's target/.
const root = fileURLToPath(new URL("../../", import.meta.url));
const TARGET = resolve(root, process.env.CARGO_TARGET_DIR || "target");
const BIN = process.env.SBC_BIN || resolve(TARGET, "debug/solar-charging-backend");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = process.env.SCREENSHOT; // a path: save the README's screenshot there

let demo, base, browser;

function startDemo() {
  // Port 0: the banner names the port the OS picked.
  const child = spawn(BIN, ["demo", "--port", "0", "--speed", "100", "--soc", "38"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const guard = setTimeout(() => reject(new Error(`the demo did not start:\n${out}`)), 60_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/Dashboard:\s+(http:\/\/[^\s/]+)\//);
      if (m) {
        clearTimeout(guard);
        resolve({ child, base: m[1] });
      }
    });
    child.stderr.on("data", (d) => (out += d));
    child.on("exit", (code) => reject(new Error(`the demo exited (${code}):\n${out}`)));
  });
}

before(async () => {
  ({ child: demo, base } = await startDemo());
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
  demo?.kill("SIGTERM");
});

async function open(viewport = { width: 1100, height: 900 }) {
  const page = await browser.newPage({ viewport });
  const failures = [];
  page.on("requestfailed", (r) => failures.push(r.url()));
  page.on("request", (r) => {
    if (!r.url().startsWith(base)) failures.push(`off-site: ${r.url()}`);
  });
  page.on("console", (m) => process.stderr.write(`console: ${m.text()}\n`));
  await page.goto(`${base}/`);
  // Live data arrives from the API: the SOC shows a number.
  await page.waitForFunction(() => /\d+ %/.test(document.getElementById("soc").textContent));
  return { page, failures };
}

test("the dashboard shows the battery, then saves a schedule through its form", async () => {
  const { page, failures } = await open();
  assert.match(await page.textContent("#mqtt"), /connected/);
  await page.fill("#f-target", "77");
  await page.fill("#f-time", "03:45");
  await page.selectOption("#f-mode", "once");
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("msg").textContent.startsWith("Schedule saved"));
  await page.waitForFunction(() => document.getElementById("mode").textContent === "once, 77 % at 03:45");
  const schedule = await (await fetch(`${base}/api/charge/schedule`)).json();
  assert.equal(schedule.target_soc, 77);
  assert.equal(schedule.start_time, "03:45");
  assert.equal(schedule.mode, "once");
  assert.match(await page.textContent("#next"), /^\d{4}-\d\d-\d\d 03:45:00$/);
  assert.deepEqual(failures, [], "every request stays on the service and succeeds");
  await page.close();
});

test("charge now shows a charge in progress, and stop ends it", async () => {
  const { page } = await open();
  await page.fill("#now-target", "95");
  await page.click("#start");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "charging", null, { timeout: 30_000 });
  await page.waitForFunction(() => document.getElementById("started").textContent !== "–");
  assert.match(await page.textContent("#target"), /95 %/);
  if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("charging").textContent === "idle", null, { timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector("#history td").textContent !== "No charges yet", null, { timeout: 30_000 });
  assert.match(await page.textContent("#history"), /cancelled/);
  await page.close();
});

test("the page fits a phone screen without sideways scrolling", async () => {
  const { page } = await open({ width: 390, height: 844 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `page is ${width}px wide on a 390px screen`);
  await page.close();
});
