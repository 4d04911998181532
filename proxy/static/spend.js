// Where the money goes: the KPI cards, the live ticker, daily spend by provider, spend by agent type, the
// six-month trend, cost per station, and the top pipeline runs with their run view.

import { api, query } from "./api.js";
import { barChart, legend } from "./charts.js";
import { openDetail } from "./dialog.js";
import { badge, bar, code, empty, h, replace, slotOf, table, td } from "./dom.js";
import { ago, compact, dateTime, dayLabel, int, money, moneyShort, monthLabel, pct } from "./format.js";

export function noCallsYet() {
  return empty("No calls yet — point an agent at ", code(`${window.location.origin}/v1`), " or run ",
    code("spendgate demo"), ".");
}

function statusOf(percent) {
  if (percent === null || percent === undefined) return "none";
  if (percent >= 100) return "red";
  return percent >= 80 ? "yellow" : "green";
}

function card(id, label, value, dataValue, sub, extra = null) {
  return h("article", { class: "kpi", id },
    h("h3", {}, label),
    h("p", { class: "kpi-value", dataset: { value: String(dataValue) } }, value),
    h("p", { class: "kpi-sub" }, sub), extra);
}

const BUDGET_GUIDANCE = {
  green: "Below 80 % of the monthly budget.",
  yellow: "80 % or more used: review the costliest agents and runs below.",
  red: "The monthly budget is used up: raise the limit or wait for the next month.",
};

// summary: the month of the project (GET /api/ai-cost/monthly-summary) or of the org (…/org-summary).
export function renderKpis(el, summary) {
  const level = statusOf(summary.budgetPct);
  let budget;
  if (summary.budgetLimit === null) {
    budget = card("kpi-budget", "Budget used", "No budget", "", "Add a monthly budget in config.yaml to track it here.");
  } else if (summary.budgetPct === null) {  // a limit of 0: nothing may be spent
    budget = card("kpi-budget", "Budget used", "—", "", `the monthly limit is ${money(summary.budgetLimit)}`);
  } else {
    budget = card("kpi-budget", "Budget used", pct(summary.budgetPct), summary.budgetPct,
      `of ${money(summary.budgetLimit)} this month`,
      h("div", { class: `budget-alert ${level}`, role: "status" }, bar(summary.budgetPct, level),
        h("span", {}, BUDGET_GUIDANCE[level])));
  }
  replace(el,
    card("kpi-spend", "Spend this month", money(summary.totalCost), summary.totalCost, "month to date (UTC)"),
    card("kpi-tokens", "Tokens", int(summary.totalTokens), summary.totalTokens, "input + output"),
    card("kpi-jobs", "Agent jobs", int(summary.totalJobs), summary.totalJobs, "calls and unmetered sessions"),
    budget);
}

function tick(label, value, sub, cls = "") {
  return h("div", { class: `tick ${cls}` }, h("span", { class: "tick-label" }, label),
    h("span", { class: "tick-value" }, value), h("span", { class: "tick-sub" }, sub));
}

// report: GET /api/v1/admin/metrics/cost-optimization; newest: the latest call (or null).
export function renderTicker(el, report, newest) {
  const tvy = report.today_vs_yesterday;
  let change = "no spend yesterday";
  let trend = "";
  if (tvy.change_pct !== null) {
    trend = tvy.change_pct > 0 ? "up" : tvy.change_pct < 0 ? "down" : "";
    change = `${tvy.change_pct > 0 ? "▲ +" : tvy.change_pct < 0 ? "▼ " : ""}${tvy.change_pct.toFixed(1)}% vs yesterday (${money(tvy.yesterday)})`;
  }
  const runs = report.pipeline_runs;
  const live = newest && Date.now() - new Date(newest.started_at).getTime() < 120_000;
  replace(el,
    h("div", { class: `live ${live ? "on" : ""}`, role: "status" },
      h("span", { class: "dot", "aria-hidden": "true" }),
      newest ? `${live ? "Live: agents running" : "Idle"} · last call ${ago(newest.started_at)}` : "No calls yet"),
    tick("Today", money(tvy.today), change, trend),
    tick("Month to date", money(report.total_cost_month), `projected ${money(report.projected_monthly)} by month end`),
    tick("Avg per pipeline run", money(runs.avg_cost_per_run),
      runs.avg_cost_per_run === null ? "no tagged runs this month" : `over this month's runs`));
}

// data: GET /api/factory/daily-spend
export function renderDaily(el, data, days) {
  const slots = new Map(data.providers.map((name, i) => [name, i % 8]));
  if (data.days.every((d) => d.cost === 0 && d.jobs === 0)) {
    replace(el, empty(`No spend in the last ${days} days — point an agent at `, code(`${window.location.origin}/v1`),
      " or run ", code("spendgate demo"), "."));
    return;
  }
  const chart = h("div", { class: "chart-box" });
  replace(el, chart, legend(data.providers.map((name) => ({ name, slot: slots.get(name) }))));
  const points = data.days.map((d) => ({
    label: dayLabel(d.date),
    total: d.cost,
    segments: Object.entries(d.byProvider).map(([name, value]) => ({ slot: slots.get(name), value })),
    tooltip: [d.date, `Cost ${money(d.cost)}`, `Tokens ${int(d.tokens)}`, `Jobs ${int(d.jobs)}`,
      ...Object.entries(d.byProvider).map(([name, value]) => `${name}: ${money(value)}`)],
    aria: `${d.date}: ${money(d.cost)}, ${int(d.tokens)} tokens, ${int(d.jobs)} jobs`,
  }));
  barChart(chart, points, moneyShort);
}

export function renderAgents(el, summary) {
  const rows = summary.agentBreakdown;
  if (!rows.length) {
    replace(el, empty("No spend this month yet. Tag calls with ", code("X-Spendgate-Agent"),
      " to see it by agent type."));
    return;
  }
  replace(el, table(
    [{ label: "Agent type" }, { label: "Runs", num: true }, { label: "Tokens", num: true },
      { label: "Cost", num: true }, { label: "% of total" }],
    rows.map((a) => h("tr", {}, td(badge(a.agentType)), td(int(a.totalJobs), { num: true }),
      td(int(a.inputTokens + a.outputTokens), { num: true }), td(money(a.cost), { num: true }),
      td(h("span", { class: "pct-cell" }, bar(a.pctOfTotal, `s${slotOf(a.agentType)}`), pct(a.pctOfTotal)))))));
}

export function renderTrend(el, months) {
  if (months.every((m) => m.cost === 0 && m.jobCount === 0)) {
    replace(el, empty("No spend in the last six months yet. ", code("spendgate demo --backfill 90d"),
      " fills this chart with history."));
    return;
  }
  const chart = h("div", { class: "chart-box" });
  replace(el, chart);
  barChart(chart, months.map((m) => ({
    label: monthLabel(m.month), total: m.cost, segments: [{ slot: 0, value: m.cost }],
    tooltip: [m.month, `Cost ${money(m.cost)}`, `Tokens ${int(m.totalTokens)}`, `Jobs ${int(m.jobCount)}`],
    aria: `${m.month}: ${money(m.cost)}, ${int(m.totalTokens)} tokens, ${int(m.jobCount)} jobs`,
  })), moneyShort);
}

// metrics: GET /api/factory/metrics?metricType=cost
export function renderStations(el, metrics) {
  const rows = metrics.costPerStation;
  if (!rows.length) {
    replace(el, empty("No station-tagged spend in the last 30 days. Send ", code("X-Spendgate-Station"),
      " (research, development, qa, …) with each call."));
    return;
  }
  const top = Math.max(...rows.map((r) => r.cost));
  replace(el, h("ul", { class: "hbars" }, rows.map((r) => h("li", {},
    h("span", { class: "hbar-label" }, r.station), bar(top ? (100 * r.cost) / top : 0, "s2"),
    h("span", { class: "num" }, money(r.cost))))),
  h("p", { class: "muted small" }, `Average cost per completed issue: ${money(metrics.avgCostPerIssue)}`));
}

export function renderTopRuns(el, runs) {
  if (!runs.length) {
    replace(el, empty("No pipeline runs this month. Tag each call of a run with ", code("X-Spendgate-Run"), "."));
    return;
  }
  const top = Math.max(...runs.map((r) => r.cost));
  replace(el, table(
    [{ label: "Run" }, { label: "Status" }, { label: "Started" }, { label: "Jobs", num: true },
      { label: "Tokens", num: true }, { label: "Cost", num: true }],
    runs.map((r) => h("tr", {},
      td(h("button", { class: "link", type: "button", onclick: () => openRun(r.runId),
        "aria-label": `Open run ${r.runId}` }, r.runId)),
      td(h("span", { class: `status ${r.status}` }, r.status)),
      td(h("span", {}, dateTime(r.startedAt), r.trigger ? h("span", { class: "muted small" }, ` · ${r.trigger}`) : null),
        { cls: "wrap" }),
      td(int(r.jobCount), { num: true }), td(compact(r.totalTokens), { num: true }),
      td(h("span", { class: "cost-bar" }, bar(top ? (100 * r.cost) / top : 0, "s1"), money(r.cost)), { num: true })))));
}

// The run view: every call of the run, its per-agent breakdown, and its retries (calls with retry_of).
export function openRun(run) {
  return openDetail(`Pipeline run ${run}`, async () => {
    const page = await api(`/api/calls${query({ run, limit: 1000 })}`);
    const calls = page.calls.filter((c) => c.status !== "refused");
    if (!calls.length) return empty("No calls of this run are visible to this key.");
    const total = calls.reduce((sum, c) => sum + c.cost_usd, 0);
    const retries = calls.filter((c) => c.retry_of);
    const retryCost = retries.reduce((sum, c) => sum + c.cost_usd, 0);
    const agents = new Map();
    for (const c of calls) {
      const name = c.agent || "unattributed";
      const a = agents.get(name) || { calls: 0, cost: 0, tokens: 0 };
      a.calls += 1; a.cost += c.cost_usd; a.tokens += c.input_tokens + c.output_tokens;
      agents.set(name, a);
    }
    const byAgent = [...agents.entries()].sort((x, y) => y[1].cost - x[1].cost);
    return h("div", {},
      h("div", { class: "facts" },
        fact("Total cost", money(total)), fact("Calls", int(calls.length)),
        fact("Retries", `${int(retries.length)} · ${money(retryCost)}`),
        fact("Tokens", int(calls.reduce((s, c) => s + c.input_tokens + c.output_tokens, 0)))),
      h("h3", {}, "Per agent"),
      table([{ label: "Agent" }, { label: "Calls", num: true }, { label: "Tokens", num: true },
        { label: "Cost", num: true }, { label: "Share" }],
      byAgent.map(([name, a]) => h("tr", {}, td(badge(name)), td(int(a.calls), { num: true }),
        td(int(a.tokens), { num: true }), td(money(a.cost), { num: true }),
        td(h("span", { class: "pct-cell" }, bar(total ? (100 * a.cost) / total : 0, `s${slotOf(name)}`),
          pct(total ? (100 * a.cost) / total : 0)))))),
      h("h3", {}, "Calls"),
      callsTable(calls, { inView: true }),
      page.next_cursor ? h("p", { class: "muted small" }, "Showing the latest 1,000 calls of this run.") : null);
  });
}

export function fact(label, value) {
  return h("div", { class: "fact" }, h("span", { class: "fact-label" }, label), h("span", { class: "fact-value" }, value));
}

// Calls as GET /api/calls answers them.
// In a run's or an issue's own view (`inView`) the run column is left out and retries are highlighted.
export function callsTable(calls, { inView = false } = {}) {
  return table(
    [{ label: "Time" }, { label: "Agent" }, inView ? null : { label: "Run" }, { label: "Model" },
      { label: "In / out tokens", num: true }, { label: "Cost", num: true }, { label: "Status" }].filter(Boolean),
    calls.map((c) => h("tr", { class: inView && c.retry_of ? "retry" : null },
      td(h("time", { datetime: c.started_at, title: c.started_at }, dateTime(c.started_at))),
      td(badge(c.agent || "unattributed")),
      inView ? null : td(c.run ? h("button", { class: "link", type: "button", onclick: () => openRun(c.run) }, c.run) : "—"),
      td(c.model),
      td(`${compact(c.input_tokens)} / ${compact(c.output_tokens)}`, { num: true }),
      td(money(c.cost_usd), { num: true }),
      td(h("span", { class: `status ${c.status}` }, c.retry_of ? `${c.status} · retry` : c.status)))));
}
