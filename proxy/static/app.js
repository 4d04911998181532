// The dashboard's entry point: sign-in (key from the URL fragment or the form), the key's role from
// GET /api/me, the project selector, loading every panel, and the live refresh while agents run.

import { adoptKeyFromFragment, api, chooseOrg, chosenOrg, currentKey, forgetKey, query, setKey } from "./api.js";
import { initDialog } from "./dialog.js";
import { $, empty, failed, h, replace } from "./dom.js";
import { currencyNote, setCurrency, timeOnly } from "./format.js";
import * as ops from "./ops.js";
import * as spend from "./spend.js";

const POLL_MS = 5_000; // the ticker's pace while agents run
const FULL_MS = 30_000; // everything, at the latest
const MIN_FULL_MS = 10_000; // at most this often when new calls keep arriving
const LIVE_MS = 120_000; // a call this recent means agents are running

const state = {
  me: null, project: "", days: 30, newest: null, report: null, lastFull: 0, timer: null, loading: null, again: false,
};
const ctx = { isAdmin: false, refresh: () => refreshAll(), toast };

function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function showLogin(message = "") {
  clearTimeout(state.timer);
  state.me = null;
  delete document.body.dataset.loaded;
  $("app").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("login-msg").textContent = message;
  $("key-input").value = "";
  $("key-input").focus();
}

async function signIn() {
  let me;
  try {
    me = await api("/api/me");
  } catch (err) {
    if (err.status === 401) {
      forgetKey();
      showLogin("That key is not valid on this spendgate.");
    } else {  // the key may be fine: keep it, and let the form try again
      showLogin(`Could not reach spendgate (${err.message}); try again in a moment.`);
    }
    return;
  }
  if (me.role === "agent") {
    forgetKey();
    showLogin(`The key "${me.key_name}" has the agent role, which reads only its own calls. Open the dashboard with a viewer or admin key.`);
    return;
  }
  state.me = me;
  state.project = "";
  ctx.isAdmin = me.role === "admin";
  setCurrency(me.fx_rate === null ? "USD" : me.currency, me.fx_rate === null ? 1 : me.fx_rate);
  $("currency-note").textContent = me.fx_rate === null
    ? `pricing.currency is ${me.currency} but pricing.fx_rate is not set: amounts are shown in USD.` : currencyNote();
  replace($("who"), h("span", { class: "role" }, me.role), ` ${me.key_name} · org ${me.org}`);
  $("org-picker").hidden = me.org !== "*";
  if (me.org === "*") await suggestOrgs();
  $("login").hidden = true;
  $("session").hidden = false;
  $("app").hidden = false;
  await refreshAll();
  schedule();
}

// An org-"*" admin reads one org at a time (X-Org-ID); offer the orgs of the latest calls.
async function suggestOrgs() {
  const page = await api("/api/calls?limit=200").catch(() => ({ calls: [] }));
  const orgs = [...new Set(page.calls.map((c) => c.org))].sort();
  replace($("orgs"), orgs.map((org) => h("option", { value: org })));
  if (!chosenOrg() && orgs.length) chooseOrg(orgs[0]);
  $("org").value = chosenOrg();
}

function needsOrg() {
  return state.me.org === "*" && !chosenOrg();
}

function projectOptions(summary) {
  const select = $("project");
  if (document.activeElement === select) return; // never rebuild the list under the user's hand
  const projects = summary.projects.filter((p) => p.projectId !== null).map((p) => p.projectId);
  if (state.project && !projects.includes(state.project)) projects.unshift(state.project);
  replace(select, h("option", { value: "" }, "All projects"),
    projects.map((p) => h("option", { value: p }, p)));
  select.value = state.project;
}

function show(id, result, render) {
  const el = $(id);
  if (result === null) {
    replace(el, empty("This key reads every org: name one in the Org field above to see its reports."));
  } else if (result.status === "rejected") {
    replace(el, failed(result.reason));
  } else {
    try {
      render(el, result.value);
    } catch (err) {
      replace(el, failed(err));
    }
  }
}

async function settle(promise) {
  if (promise === null) return null;
  try {
    return { status: "fulfilled", value: await promise };
  } catch (reason) {
    if (reason.status === 401) throw reason;
    return { status: "rejected", reason };
  }
}

async function loadAll() {
  const project = state.project;
  const org = !needsOrg();
  const [summary, trend, projects, report, newest, budgets, approvals, daily, stations, issues, calls, prices] =
    await Promise.all([
      settle(!org ? null : project ? api(`/api/ai-cost/monthly-summary${query({ projectId: project })}`)
        : api("/api/ai-cost/org-summary")),
      settle(org && project ? api(`/api/ai-cost/monthly-trend${query({ projectId: project })}`) : null),
      settle(org ? api("/api/ai-cost/cross-project-summary") : null),
      settle(org ? api("/api/v1/admin/metrics/cost-optimization") : null),
      settle(api("/api/calls?limit=1")),
      settle(api("/api/budgets")),
      settle(api("/api/approvals?status=pending")),
      settle(api(`/api/factory/daily-spend?days=${state.days}`)),
      settle(api("/api/factory/metrics?metricType=cost&timeRange=30d")),
      settle(api(`/api/factory/cost-per-issue${query({ timeRange: "30d", limit: 20, project })}`)),
      settle(api(`/api/calls${query({ limit: 50, project })}`)),
      settle(api("/api/prices")),
    ]);
  if (newest.status === "fulfilled") state.newest = newest.value.calls[0] || null;
  if (report && report.status === "fulfilled") state.report = report.value;
  if (projects && projects.status === "fulfilled") projectOptions(projects.value);
  for (const scope of document.querySelectorAll(".scope-project")) scope.textContent = project || "all projects";
  show("kpis", summary, spend.renderKpis);
  show("ticker", report, (el, value) => spend.renderTicker(el, value, state.newest));
  // A limit being typed in is not wiped by a refresh: the budgets wait until the form is closed.
  if (!$("budgets").querySelector(".limit-form:not([hidden])")) {
    show("budgets", budgets, (el, value) => ops.renderBudgets(el, value.budgets, ctx));
  }
  show("approvals", approvals, (el, value) => ops.renderApprovals(el, value.approvals, ctx));
  show("daily", daily, (el, value) => spend.renderDaily(el, value, state.days));
  show("agents", summary, spend.renderAgents);
  show("trend", project ? trend : summary, (el, value) => spend.renderTrend(el, project ? value : value.monthlyTrend));
  show("stations", stations, (el, value) => spend.renderStations(el, value.metrics));
  show("top-runs", summary, (el, value) => spend.renderTopRuns(el, value.topRuns));
  show("issues", issues, (el, value) => ops.renderIssues(el, value.issues));
  show("calls", calls, (el, value) => ops.renderCalls(el, value.calls));
  show("prices", prices, ops.renderPrices);
  $("updated").textContent = `Updated ${timeOnly(new Date().toISOString())}`;
  document.body.dataset.loaded = "1";
}

// One load at a time; a refresh asked for meanwhile runs once the current one ends.
async function refreshAll() {
  if (!state.me) return;
  if (state.loading) {
    state.again = true;
    return state.loading;
  }
  state.lastFull = Date.now();
  state.loading = loadAll().catch((err) => {
    if (err.status === 401) {
      forgetKey();
      showLogin("The key was refused (it may have been removed from config.yaml). Sign in again.");
    }
  }).finally(() => {
    state.loading = null;
    if (state.again) {
      state.again = false;
      refreshAll();
    }
  });
  return state.loading;
}

async function refreshTicker() {
  if (needsOrg()) return;
  try {
    state.report = await api("/api/v1/admin/metrics/cost-optimization");
    spend.renderTicker($("ticker"), state.report, state.newest);
  } catch {
    // the next full refresh shows the error in the panel
  }
}

// Every POLL_MS: look at the newest call. New calls refresh the page (at most every MIN_FULL_MS); while
// agents run the ticker refreshes on every tick; everything refreshes every FULL_MS regardless.
async function poll() {
  if (!state.me || document.hidden) return;
  const since = Date.now() - state.lastFull;
  if (since >= FULL_MS) {
    await refreshAll();
    return;
  }
  const page = await api("/api/calls?limit=1").catch(() => null);
  if (!page || !state.me) return;
  const newest = page.calls[0] || null;
  const changed = (newest && newest.request_id) !== (state.newest && state.newest.request_id);
  state.newest = newest;
  if (changed && since >= MIN_FULL_MS) {
    await refreshAll();
  } else if (changed || (newest && Date.now() - Date.parse(newest.started_at) < LIVE_MS)) {
    await refreshTicker();
  } else if (state.report) {
    spend.renderTicker($("ticker"), state.report, state.newest);
  }
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    await poll();
    if (state.me) schedule();
  }, POLL_MS);
}

function wire() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    setKey(key);
    await signIn();
  });
  $("signout").addEventListener("click", () => {
    forgetKey();
    showLogin("Signed out: the key was removed from this tab.");
  });
  $("project").addEventListener("change", (event) => {
    state.project = event.target.value;
    refreshAll();
  });
  $("org").addEventListener("change", (event) => {
    chooseOrg(event.target.value.trim());
    state.project = "";
    refreshAll();
  });
  for (const button of document.querySelectorAll("#range button")) {
    button.addEventListener("click", async () => {
      state.days = Number(button.dataset.days);
      for (const other of document.querySelectorAll("#range button")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      const el = $("daily");
      try {
        spend.renderDaily(el, await api(`/api/factory/daily-spend?days=${state.days}`), state.days);
      } catch (err) {
        replace(el, failed(err));
      }
    });
  }
  $("refresh").addEventListener("click", () => refreshAll());
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, select, textarea");
    if (event.key === "r" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey && state.me
        && !$("detail").open) {
      refreshAll();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.me && Date.now() - state.lastFull >= MIN_FULL_MS) refreshAll();
  });
}

async function boot() {
  adoptKeyFromFragment();
  initDialog();
  wire();
  if (currentKey()) await signIn();
  else showLogin();
}

boot();
