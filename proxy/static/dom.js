// Building DOM without HTML strings: text is always set as text (nothing from the API is parsed as markup),
// and no inline style attribute is ever written (the Content-Security-Policy forbids them); sizes are set
// through the CSSOM (element.style), which the policy allows.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name === "class") el.setAttribute("class", value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(id) {
  return document.getElementById(id);
}

export function replace(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

// A proportional bar (0-100 %) as a track with a filled part.
export function bar(percent, cls = "") {
  const fillEl = h("span", { class: `bar-fill ${cls}` });
  fillEl.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return h("span", { class: "bar", "aria-hidden": "true" }, fillEl);
}

// What an empty panel says instead of showing a blank box: what happened and what to do.
export function empty(...parts) {
  return h("div", { class: "empty" }, h("p", {}, ...parts));
}

export function code(text) {
  return h("code", {}, text);
}

export function failed(err) {
  return h("div", { class: "empty error" }, h("p", {}, `Could not load this part: ${err.message}`));
}

export function table(headers, rows, { cls = "" } = {}) {
  const head = h("tr", {}, headers.map((col) => h("th", { scope: "col", class: col.num ? "num" : "" }, col.label)));
  return h("div", { class: `table-wrap ${cls}` },
    h("table", {}, h("thead", {}, head), h("tbody", {}, rows)));
}

export function td(content, { num = false, cls = "" } = {}) {
  return h("td", { class: `${num ? "num" : ""} ${cls}`.trim() || null }, content);
}

// Colour slot (0-7) of a name: handed out in order of first use, so the first eight names (the agent table,
// costliest first) all differ, and a name keeps its colour across panels and refreshes.
const slots = new Map();

export function slotOf(name) {
  const key = String(name);
  if (!slots.has(key)) slots.set(key, slots.size % 8);
  return slots.get(key);
}

export function badge(name) {
  return h("span", { class: `badge s${slotOf(name)}` }, name ?? "—");
}
