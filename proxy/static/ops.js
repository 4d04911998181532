// What to act on and look up: budget bars (admins change a limit), pending approvals (admins approve or
// deny), the last 50 calls, cost per issue with its drill-down, and the model price table.

import { api } from "./api.js";
import { openDetail } from "./dialog.js";
import { bar, code, empty, h, replace, table, td } from "./dom.js";
import { compact, dateTime, int, money, pct, until } from "./format.js";
import { callsTable, fact, noCallsYet } from "./spend.js";

const MAX_COUNTERS = 6; // per budget; a "*" scope has one counter per value seen

function scopeText(scope) {
  const parts = Object.entries(scope).filter(([dim]) => dim !== "org").map(([dim, value]) => `${dim}: ${value}`);
  return parts.length ? parts.join(", ") : `org ${scope.org ?? "(all)"}`;
}

function limitForm(budget, onDone) {
  const input = h("input", { type: "number", min: "0", step: "any", required: true, inputmode: "decimal",
    "aria-label": `New limit of ${budget.name} in USD`, value: String(budget.limit_usd) });
  const message = h("span", { class: "form-msg", role: "status" });
  const form = h("form", { class: "limit-form", hidden: true },
    h("label", {}, "New limit (USD) ", input), h("button", { type: "submit" }, "Save"),
    h("button", { type: "button", class: "ghost", onclick: () => { form.hidden = true; } }, "Cancel"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`/api/budgets/${encodeURIComponent(budget.name)}/limit`, {
        method: "PUT", body: { limit_usd: Number(input.value) } });
      form.hidden = true;
      onDone();
    } catch (err) {
      message.textContent = err.message;
    }
  });
  return form;
}

export function renderBudgets(el, budgets, ctx) {
  if (!budgets.length) {
    replace(el, empty("No budgets configured. Add one under ", code("budgets:"), " in config.yaml ",
      "(a cap per org, agent, station or pipeline run) and it shows here with its spend."));
    return;
  }
  const byName = new Map();
  for (const b of budgets) byName.set(b.name, [...(byName.get(b.name) || []), b]);
  const items = [];
  for (const [name, counters] of byName) {
    counters.sort((x, y) => y.pct - x.pct);
    const first = counters[0];
    const form = ctx.isAdmin ? limitForm(first, ctx.refresh) : null;
    items.push(h("li", { class: "budget" },
      h("div", { class: "budget-head" },
        h("strong", {}, name),
        h("span", { class: "muted" }, ` ${first.window} · ${first.on_exceed}${first.mode === "shadow" ? " · shadow" : ""}`),
        ctx.isAdmin ? h("button", { type: "button", class: "ghost small", onclick: () => {
          form.hidden = !form.hidden;
          if (!form.hidden) form.querySelector("input").focus();
        } }, "Change limit") : null),
      form,
      h("ul", { class: "counters" }, counters.slice(0, MAX_COUNTERS).map((c) => h("li", { class: `counter ${c.status}` },
        h("span", { class: "counter-scope" }, scopeText(c.scope)),
        bar(c.pct, c.status),
        h("span", { class: "counter-figures" },
          `${money(c.spent_usd)} of ${money(c.limit_usd)} · ${pct(c.pct)}`,
          h("span", { class: "muted" }, ` · ${until(c.resets_at)}`))))),
      counters.length > MAX_COUNTERS ? h("p", { class: "muted small" },
        `and ${counters.length - MAX_COUNTERS} more counters below ${pct(counters[MAX_COUNTERS].pct)}`) : null));
  }
  replace(el, h("ul", { class: "budgets" }, items));
}

export function renderApprovals(el, approvals, ctx) {
  if (!approvals.length) {
    replace(el, empty("No approvals waiting. A call over an ", code("on_exceed: approve"),
      " budget is held here until an admin approves or denies it."));
    return;
  }
  const decide = async (id, action, button) => {
    button.disabled = true;
    try {
      await api(`/api/approvals/${encodeURIComponent(id)}/${action}`, { method: "POST", body: {} });
      ctx.toast(`Approval ${id} ${action === "approve" ? "approved" : "denied"}.`);
    } catch (err) {
      ctx.toast(`Could not ${action} ${id}: ${err.message}`);
    }
    ctx.refresh();
  };
  replace(el, h("ul", { class: "approvals" }, approvals.map((a) => h("li", { class: "approval", dataset: { id: a.id } },
    h("div", {}, h("strong", {}, a.budget), h("span", { class: "muted" }, ` ${scopeText(a.scope)}`),
      h("div", { class: "small muted" },
        `worst case ${money(a.worst_case_usd)} · requested ${dateTime(a.requested_at)}`,
        a.requested_by ? ` by ${a.requested_by}` : "")),
    ctx.isAdmin
      ? h("div", { class: "actions" },
        h("button", { type: "button", class: "approve", onclick: (e) => decide(a.id, "approve", e.currentTarget) }, "Approve"),
        h("button", { type: "button", class: "deny ghost", onclick: (e) => decide(a.id, "deny", e.currentTarget) }, "Deny"))
      : h("span", { class: "muted small" }, "an admin key can decide")))));
}

export function renderCalls(el, calls) {
  if (!calls.length) {
    replace(el, noCallsYet());
    return;
  }
  replace(el, callsTable(calls));
}

export function renderIssues(el, issues) {
  if (!issues.length) {
    replace(el, empty("No issue-tagged spend in the last 30 days. Send ", code("X-Spendgate-Issue"),
      " with each call (and post the factory's events) to see cost per issue."));
    return;
  }
  replace(el, table(
    [{ label: "Issue" }, { label: "Project" }, { label: "Total", num: true }, { label: "Tokens", num: true },
      { label: "Compute", num: true }, { label: "Retries", num: true }, { label: "Calls", num: true },
      { label: "Last seen" }],
    issues.map((i) => h("tr", {},
      td(h("button", { class: "link", type: "button", onclick: () => openIssue(i.issue) }, i.issue)),
      td(i.project ?? "—"), td(money(i.totalCostUsd), { num: true }), td(money(i.tokenCostUsd), { num: true }),
      td(money(i.computeCostUsd), { num: true }), td(money(i.retryCostUsd), { num: true }),
      td(`${int(i.calls)}${i.unpricedCalls ? ` (${i.unpricedCalls} unpriced)` : ""}`, { num: true }),
      td(dateTime(i.lastSeen))))));
}

function shareList(rows, key, total) {
  return h("ul", { class: "hbars" }, rows.map((r) => h("li", {},
    h("span", { class: "hbar-label" }, r[key] ?? "untagged"), bar(total ? (100 * (r.costUsd ?? 0)) / total : 0, "s3"),
    h("span", { class: "num" }, `${money(r.costUsd)} · ${int(r.calls)} calls`))));
}

export function openIssue(issue) {
  return openDetail(`Issue ${issue}`, async () => {
    const d = await api(`/api/factory/cost-per-issue/${encodeURIComponent(issue)}`);
    const calls = d.calls.map((c) => ({ started_at: c.startedAt, agent: c.agent, model: c.model,
      input_tokens: c.inputTokens, output_tokens: c.outputTokens, cost_usd: c.costUsd, status: c.status,
      retry_of: c.retryOf }));
    return h("div", {},
      h("div", { class: "facts" },
        fact("Total", money(d.totalCostUsd)), fact("Tokens leg", money(d.tokenCostUsd)),
        fact("Compute leg", `${money(d.computeCostUsd)} · ${d.computeHours} h`),
        fact("Retries", money(d.retryCostUsd)), fact("Rework", money(d.reworkCostUsd))),
      d.unpricedCalls ? h("p", { class: "muted small" },
        `${d.unpricedCalls} calls of unpriced models are not in these totals.`) : null,
      h("div", { class: "cols" },
        h("section", {}, h("h3", {}, "By station"), shareList(d.byStation, "station", d.totalCostUsd)),
        h("section", {}, h("h3", {}, "By agent"), shareList(d.byAgent, "agent", d.totalCostUsd))),
      h("h3", {}, "By model"),
      table([{ label: "Model" }, { label: "Provider" }, { label: "Calls", num: true },
        { label: "In / out tokens", num: true }, { label: "Cost", num: true }],
      d.byModel.map((m) => h("tr", {}, td(m.model ?? "—"), td(m.provider ?? "—"), td(int(m.calls), { num: true }),
        td(`${compact(m.inputTokens)} / ${compact(m.outputTokens)}`, { num: true }),
        td(m.unpriced ? "unpriced" : money(m.costUsd), { num: true })))),
      h("h3", {}, "Calls"),
      calls.length ? callsTable(calls, { inView: true }) : empty("No proxied calls: this issue's cost is compute only."),
      d.callsTruncated ? h("p", { class: "muted small" }, "The latest 200 calls; every total counts them all.") : null);
  });
}

function rate(value) {
  return value === null ? "—" : money(value);
}

export function renderPrices(el, data) {
  if (!data.models.length) {
    replace(el, empty("No models configured. Add one under ", code("models:"), " in config.yaml."));
    return;
  }
  replace(el, table(
    [{ label: "Model" }, { label: "Provider" }, { label: "Priced as" }, { label: "Input / 1M", num: true },
      { label: "Cached input / 1M", num: true }, { label: "Output / 1M", num: true }],
    data.models.map((m) => h("tr", {},
      td(h("span", {}, m.model, m.position ? h("span", { class: "muted small" }, ` fallback ${m.position}`) : null)),
      td(m.provider),
      td(m.priced_by_request ? h("span", { class: "muted" }, "the model each call names")
        : h("span", {}, m.priced_as, m.source === "override" ? h("span", { class: "muted small" }, " (override)") : null,
          m.unpriced ? h("span", { class: "status error" }, " no price") : null)),
      td(rate(m.input_per_mtok), { num: true }), td(rate(m.cached_input_per_mtok), { num: true }),
      td(rate(m.output_per_mtok), { num: true })))),
  h("p", { class: "muted small" }, `Catalog ${data.catalog_version}. Prices per 1M tokens.`));
}
