// Drives the approvers' console in headless Chromium for the console's test (issue 17):
// playwright-core (npm, no browser download) launches Debian's chromium with a virtual
// WebAuthn authenticator (DevTools `WebAuthn` domain: CTAP2, internal, user verification),
// then runs the test's commands, one JSON object per line on stdin, answering one JSON
// object per line on stdout ({ok: true, ...} or {ok: false, error}).
//
// Environment: NODE_PATH (node_modules with playwright-core and axe-core), CHROMIUM (the
// browser), CONSOLE_ORIGIN (https://console.custos.test:<port>), ARTIFACTS (screenshots).
const { chromium } = require("playwright-core");
const path = require("path");
const readline = require("readline");

const origin = process.env.CONSOLE_ORIGIN;
const host = new URL(origin).hostname;
const artifacts = process.env.ARTIFACTS;
const STEP_MS = 30000;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    // The console's name resolves to the test's server on loopback; its certificate is
    // the test's own throwaway CA's (the page stays a secure context).
    args: [`--host-resolver-rules=MAP ${host} 127.0.0.1`, "--ignore-certificate-errors", "--no-sandbox"],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  const status = () => page.locator("#status").innerText();
  const main = () => page.locator("main").innerText();

  const commands = {
    // The registration page, loaded anew.
    async open_register() {
      await page.goto(`${origin}/console/register`);
      return {};
    },
    // The registration page: create the passkey with the operator's options.
    async register({ options }) {
      await page.goto(`${origin}/console/register`);
      await page.fill("#create-options", JSON.stringify(options));
      await page.click('#register button[type="submit"]');
      await page.waitForFunction(() => document.getElementById("registration").value !== "");
      return {
        registration: JSON.parse(await page.inputValue("#registration")),
        fingerprint: await page.locator("#fingerprint").innerText(),
      };
    },
    // The same page: prove possession with the operator's second options.
    async prove({ options }) {
      await page.fill("#get-options", JSON.stringify(options));
      await page.click('#prove button[type="submit"]');
      await page.waitForFunction(
        () => document.getElementById("assertion").value !== "" || document.getElementById("status").className === "error",
      );
      const made = await page.inputValue("#assertion");
      return { assertion: made ? JSON.parse(made) : null, status: await status() };
    },
    async sign_in({ name }) {
      await page.goto(`${origin}/console`);
      await page.fill("#name", name);
      await page.click('#sign-in button[type="submit"]');
      // Signed in, the script loads /console again: waitForSelector outlives navigations.
      await page.waitForSelector(".who, #status.error");
      return { signed_in: (await page.locator(".who").count()) === 1, status: await status() };
    },
    async goto({ path: at, screenshot }) {
      await page.goto(`${origin}${at}`);
      if (screenshot) await page.screenshot({ path: path.join(artifacts, screenshot), fullPage: true });
      return { url: page.url(), main: await main() };
    },
    async approve({ path: at }) {
      await page.goto(`${origin}${at}`);
      await page.click("#approve");
      // Approved, the script reloads the page, which then has no approve button.
      await page.waitForSelector("#status.error, main:not(:has(#approve))");
      return { status: await status(), main: await main() };
    },
    async reject({ path: at }) {
      await page.goto(`${origin}${at}`);
      page.once("dialog", (d) => d.accept());
      await page.click("#reject");
      await page.waitForSelector("#status.error, main:not(:has(#reject))");
      return { status: await status(), main: await main() };
    },
    // A sign-in whose answer is sent twice (a replay by whoever saw it on the way).
    async replay_sign_in({ name }) {
      await page.goto(`${origin}/console`);
      return page.evaluate(async (name) => {
        const post = async (url, body) => {
          const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
          return { http: r.status, body: await r.text() };
        };
        const b64u = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
        const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
        const c = JSON.parse((await post("/console/api/sign-in/begin", { name })).body);
        const cred = await navigator.credentials.get({ publicKey: {
          challenge: b64u(c.challenge), rpId: c.rp_id, userVerification: "required",
          allowCredentials: [{ type: "public-key", id: b64u(c.credential_id) }] } });
        const answer = { name, nonce: c.nonce, answer: {
          authenticator_data_hex: hex(cred.response.authenticatorData),
          client_data_json_hex: hex(cred.response.clientDataJSON),
          signature_hex: hex(cred.response.signature) } };
        const first = await post("/console/api/sign-in/finish", answer);
        const second = await post("/console/api/sign-in/finish", answer);
        return { first, second };
      }, name);
    },
    async sign_out() {
      await page.click("#sign-out");
      await page.waitForURL(`${origin}/console`);
      await page.waitForSelector("#sign-in");
      return {};
    },
    // axe-core in the page as it is: violations with their impact.
    async axe({ path: at }) {
      if (at) await page.goto(`${origin}${at}`);
      // The console's CSP allows only its own scripts; DevTools evaluation is not a page
      // script, so axe runs without weakening the page.
      const source = require("fs").readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
      await page.evaluate(source);
      const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
      return {
        violations: result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length })),
      };
    },
    async credentials() {
      const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
      return { credentials: credentials.map((c) => ({ id: c.credentialId, sign_count: c.signCount })) };
    },
    async quit() {
      await browser.close();
      return {};
    },
  };

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    let answer;
    try {
      const command = JSON.parse(line);
      const run = commands[command.op];
      if (!run) throw new Error(`no command ${command.op}`);
      answer = { ok: true, ...(await run(command)) };
    } catch (e) {
      // What the page showed, for the test's failure message.
      const shown = await page.content().catch(() => "");
      answer = { ok: false, error: String(e && e.stack ? e.stack : e), url: page.url(), page: shown.slice(0, 4000) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
    if (line.includes('"quit"')) break;
  }
  await browser.close().catch(() => {});
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
