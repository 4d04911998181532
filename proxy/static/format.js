// Number, money and time formatting. The API answers in USD; only this page converts, with the
// `currency` and `fx_rate` of GET /api/me. Numbers are shown in en-US style so every reader (and the
// browser tests) sees the same text for the same value.

const display = { currency: "USD", rate: 1 };

export function setCurrency(currency, rate) {
  display.currency = currency;
  display.rate = rate;
}

export function currencyNote() {
  return display.currency === "USD" ? "" : `Amounts in ${display.currency} at ${display.rate} per USD.`;
}

// Decimals by size, so a $0.000011 call does not read as $0.00: 2 from one unit, 4 from a cent, else 6.
export function moneyDigits(value) {
  const abs = Math.abs(value);
  if (abs === 0 || abs >= 1) return 2;
  return abs >= 0.01 ? 4 : 6;
}

export function money(usd) {
  if (usd === null || usd === undefined) return "—";
  const value = usd * display.rate;
  const digits = moneyDigits(value);
  return new Intl.NumberFormat("en-US", {
    style: "currency", currency: display.currency, minimumFractionDigits: digits, maximumFractionDigits: digits,
  }).format(value);
}

// Axis labels: short, e.g. $1.2k, $0.35, $0.004.
export function moneyShort(usd) {
  const value = usd * display.rate;
  const abs = Math.abs(value);
  const opts = { style: "currency", currency: display.currency };
  if (abs >= 1000) Object.assign(opts, { notation: "compact", maximumFractionDigits: 1 });
  else Object.assign(opts, { maximumSignificantDigits: 2 });
  return new Intl.NumberFormat("en-US", opts).format(value);
}

export function int(n) {
  return new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 }).format(n ?? 0);
}

export function compact(n) {
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(n ?? 0);
}

export function pct(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${value.toFixed(digits)}%`;
}

export function dateTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" });
}

export function timeOnly(iso) {
  return new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function dayLabel(isoDate) {
  // "2026-11-25" is a UTC calendar day: show it as such, whatever the browser's time zone.
  const d = new Date(`${isoDate}T00:00:00Z`);
  return d.toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" });
}

export function monthLabel(yyyyMm) {
  const d = new Date(`${yyyyMm}-01T00:00:00Z`);
  return d.toLocaleDateString("en-US", { month: "short", year: "2-digit", timeZone: "UTC" });
}

export function ago(iso) {
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function until(iso) {
  if (!iso) return "never resets";
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  if (seconds <= 0) return "resets now";
  if (seconds < 3600) return `resets in ${Math.ceil(seconds / 60)} min`;
  if (seconds < 172800) return `resets in ${Math.round(seconds / 3600)} h`;
  return `resets in ${Math.round(seconds / 86400)} d`;
}
