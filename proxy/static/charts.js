// Hand-made SVG charts: vertical bars, optionally stacked, drawn at the container's width (redrawn when it
// changes). Every bar is focusable and shows the shared tooltip on hover and on keyboard focus.

import { $, h, svg } from "./dom.js";

const HEIGHT = 220;
const PAD = { top: 12, right: 8, bottom: 28, left: 56 };

const TICKS = 4;

// The axis top: TICKS x a "nice" step (1, 2, 2.5 or 5 x a power of ten), so every gridline reads round.
function niceMax(value) {
  if (!(value > 0)) return TICKS;
  const raw = value / TICKS;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((s) => raw <= s * power) * power;
  return step * TICKS;
}

export function showTooltip(target, lines) {
  const tip = $("tooltip");
  tip.replaceChildren(...lines.map((line, i) => h(i === 0 ? "strong" : "div", {}, line)));
  tip.hidden = false;
  const box = target.getBoundingClientRect();
  const width = tip.offsetWidth;
  const left = Math.min(window.innerWidth - width - 8, Math.max(8, box.left + box.width / 2 - width / 2));
  const top = box.top - tip.offsetHeight - 8;
  tip.style.left = `${left}px`;
  tip.style.top = `${top < 8 ? box.bottom + 8 : top}px`;
}

export function hideTooltip() {
  $("tooltip").hidden = true;
}

// points: [{label, total, segments: [{slot, value}], tooltip: [lines], aria}]
function draw(container, points, axisLabel) {
  const width = Math.max(240, container.clientWidth);
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const max = niceMax(Math.max(...points.map((p) => p.total)));
  const chart = svg("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, class: "chart",
    role: "group" });
  for (let i = 0; i <= TICKS; i += 1) {
    const y = PAD.top + plotH - (plotH * i) / TICKS;
    chart.append(svg("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: "gridline" }),
      svg("text", { x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, axisLabel((max * i) / TICKS)));
  }
  const slot = plotW / points.length;
  const barW = Math.max(2, Math.min(48, slot * 0.7));
  const every = Math.ceil(points.length / Math.max(1, Math.floor(plotW / 56)));
  points.forEach((point, i) => {
    const x = PAD.left + slot * i + (slot - barW) / 2;
    // One tab stop per chart (the last bar); the arrow keys, Home and End move between bars.
    const group = svg("g", { class: "col", tabindex: i === points.length - 1 ? "0" : "-1", role: "img",
      "aria-label": point.aria });
    let base = PAD.top + plotH;
    for (const seg of point.segments) {
      const hgt = (plotH * seg.value) / max;
      if (hgt <= 0) continue;
      base -= hgt;
      group.append(svg("rect", { x, y: base, width: barW, height: Math.max(hgt, 0.5), class: `seg s${seg.slot}` }));
    }
    // The whole column height answers the pointer, so short bars are easy to hover.
    group.append(svg("rect", { x: PAD.left + slot * i, y: PAD.top, width: slot, height: plotH, class: "hit" }));
    const show = () => showTooltip(group, point.tooltip);
    group.addEventListener("mouseenter", show);
    group.addEventListener("focus", show);
    group.addEventListener("mouseleave", hideTooltip);
    group.addEventListener("blur", hideTooltip);
    group.addEventListener("keydown", (event) => moveFocus(event, chart, i, points.length));
    chart.append(group);
    if (i % every === 0) {
      chart.append(svg("text", { x: x + barW / 2, y: HEIGHT - 8, class: "axis", "text-anchor": "middle" },
        point.label));
    }
  });
  container.replaceChildren(chart);
}

function moveFocus(event, chart, index, count) {
  const target = { ArrowLeft: index - 1, ArrowRight: index + 1, Home: 0, End: count - 1 }[event.key];
  if (target === undefined || target < 0 || target >= count) return;
  event.preventDefault();
  const columns = chart.querySelectorAll(".col");
  columns[index].setAttribute("tabindex", "-1");
  columns[target].setAttribute("tabindex", "0");
  columns[target].focus();
}

const observed = new WeakMap();

// Draw now and again whenever the container's width changes (layout switch, window resize).
export function barChart(container, points, axisLabel) {
  observed.set(container, { points, axisLabel, width: container.clientWidth });
  draw(container, points, axisLabel);
  if (!container.dataset.observed) {
    container.dataset.observed = "1";
    new ResizeObserver(() => {
      const state = observed.get(container);
      if (state && Math.abs(container.clientWidth - state.width) > 1) {
        state.width = container.clientWidth;
        draw(container, state.points, state.axisLabel);
      }
    }).observe(container);
  }
}

export function legend(names) {
  return h("ul", { class: "legend" }, names.map(({ name, slot }) =>
    h("li", {}, h("span", { class: `swatch s${slot}`, "aria-hidden": "true" }), name)));
}
