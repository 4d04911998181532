// The key and every request the page makes. The key comes from the URL fragment (`#key=...`, removed from
// the address bar at once) or from the sign-in form, and lives in sessionStorage only: it goes in the
// Authorization header, never in a URL query or localStorage. Requests go to this origin only.

const KEY = "spendgate.key";
const ORG = "spendgate.org";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Take a key from `#key=...` into the session, then clear the fragment from the address bar and history.
export function adoptKeyFromFragment() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const key = fragment.get("key");
  if (key !== null) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
    if (key.trim()) sessionStorage.setItem(KEY, key.trim());
  }
}

export function currentKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ORG);
}

// The org an org-"*" admin reads (sent as X-Org-ID); empty for every other key.
export function chosenOrg() {
  return sessionStorage.getItem(ORG) || "";
}

export function chooseOrg(org) {
  if (org) sessionStorage.setItem(ORG, org);
  else sessionStorage.removeItem(ORG);
}

export async function api(path, { method = "GET", body } = {}) {
  const key = currentKey();
  if (!key) throw new ApiError(401, "no key");
  const headers = { Authorization: `Bearer ${key}` };
  const org = chosenOrg();
  if (org) headers["X-Org-ID"] = org;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit", redirect: "error", referrerPolicy: "no-referrer",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError(response.status, err.message || `HTTP ${response.status}`, err.code);
  }
  return data;
}

// A query string from an object, skipping empty values (never carries the key).
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") q.set(name, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
