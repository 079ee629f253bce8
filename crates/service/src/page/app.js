"use strict";
// The order lookup page. Order data comes from an untrusted channel, so every value is put into
// the page with textContent (or a text node), never as HTML; the server's Content-Security-Policy
// also forbids any script but this file.

const $ = (selector) => document.querySelector(selector);
const PAGE_SIZE = 20;

// What the lookup box looks for, by the choice next to it: `id` opens one order, the others list
// the orders whose column equals the text (the parameter name of /orders and of this page's URL).
// `max` is the longest value the service accepts: the order_uid rule, and the search's bound.
const LOOKUPS = {
  id: { label: "Order id", noun: "order id", max: 64, button: "Show order", placeholder: "e.g. b563feb7b2b84b6test" },
  track_number: { label: "Track number", noun: "track number", max: 256, button: "Find orders", placeholder: "e.g. WBILMTESTTRACK" },
  customer_id: { label: "Customer id", noun: "customer id", max: 256, button: "Find orders", placeholder: "e.g. test" },
};

function setText(element, value) {
  element.textContent = value === undefined || value === null ? "—" : String(value);
}

function cell(row, value, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  setText(td, value);
  row.append(td);
  return td;
}

// "2021-11-26T06:22:19Z" → both the reader's local time and UTC; an unparsable value is shown as is.
function formatDate(date, raw) {
  if (Number.isNaN(date.getTime())) return { local: raw, utc: raw };
  return {
    local: date.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
    }),
    utc: date.toISOString().replace(".000Z", "Z"),
  };
}

function money(value, currency) {
  return value === undefined ? "—" : value + " " + (currency || "");
}

// Pretty-prints JSON text without parsing it into numbers, so that the raw view shows every
// value exactly as served (a JavaScript number would round integers above 2^53).
function prettyJson(text) {
  let out = "";
  let indent = 0;
  let inString = false;
  const newline = () => "\n" + "  ".repeat(indent);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") { out += text[++i] ?? ""; } else if (c === '"') { inString = false; }
      continue;
    }
    if (c === '"') { inString = true; out += c; }
    else if (c === "{" || c === "[") {
      // Keep empty containers on one line.
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j])) j++;
      if (text[j] === (c === "{" ? "}" : "]")) { out += c + text[j]; i = j; continue; }
      indent++; out += c + newline();
    } else if (c === "}" || c === "]") { indent = Math.max(0, indent - 1); out += newline() + c; }
    else if (c === ",") { out += c + newline(); }
    else if (c === ":") { out += ": "; }
    else if (!/\s/.test(c)) { out += c; }
  }
  return out;
}

function showState(kind, message) {
  const state = $("#state");
  state.className = "state" + (kind ? " " + kind : "");
  setText(state, message);
  state.hidden = false;
}

function hideState() { $("#state").hidden = true; }

function render(order, rawText) {
  const get = (path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), order);
  const created = formatDate(new Date(order.date_created), order.date_created);
  const payment = order.payment || {};
  const paid = formatDate(new Date(Number(payment.payment_dt) * 1000), payment.payment_dt);
  const items = Array.isArray(order.items) ? order.items : [];
  const sum = (key) => items.reduce((total, item) => total + (Number(item[key]) || 0), 0);
  const computed = {
    date_local: created.local,
    date_utc: created.utc,
    "payment.paid_local": paid.local,
    "payment.paid_utc": paid.utc,
    "payment.amount": money(payment.amount, payment.currency),
    "payment.goods_total": money(payment.goods_total, payment.currency),
    "payment.delivery_cost": money(payment.delivery_cost, payment.currency),
    "payment.custom_fee": money(payment.custom_fee, payment.currency),
    item_count: items.length,
    items_price: money(sum("price"), payment.currency),
    items_total: money(sum("total_price"), payment.currency),
  };
  for (const element of document.querySelectorAll("#order [data-field]")) {
    const field = element.dataset.field;
    const value = field in computed ? computed[field] : get(field);
    // An empty string is a real value (internal_signature, request_id): show that it is empty.
    setText(element, value === "" ? "(empty)" : value);
  }

  const body = $("#items tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    cell(row, item.name);
    cell(row, item.brand);
    cell(row, item.size);
    cell(row, money(item.price, payment.currency), "num");
    cell(row, item.sale === undefined ? undefined : item.sale + " %", "num");
    cell(row, money(item.total_price, payment.currency), "num");
    cell(row, item.status, "num");
    cell(row, item.chrt_id, "num mono");
    cell(row, item.nm_id, "num mono");
    cell(row, item.rid, "mono");
    cell(row, item.track_number, "mono");
    body.append(row);
  }

  $("#raw").textContent = prettyJson(rawText);
  $("#raw").dataset.served = rawText;
  setText($("#copy-state"), "");
  $("#order").hidden = false;
  document.title = "Order " + order.order_uid + " · ordersvc";
}

let lookup = 0; // Only the latest lookup may change the page.

async function show(id, attempt = 0) {
  const mine = ++lookup;
  $("#order").hidden = true;
  if (!id) { hideState(); document.title = "Orders · ordersvc"; return; }
  showState("", "Loading order “" + id + "”…");
  let response, text;
  try {
    response = await fetch("/order/" + encodeURIComponent(id), { headers: { Accept: "application/json" } });
    text = await response.text();
  } catch (error) {
    if (mine === lookup) showState("error", "Cannot reach the service (" + error.message + "). Check your connection and try again.");
    return;
  }
  if (mine !== lookup) return;
  let body = null;
  try { body = JSON.parse(text); } catch (error) { body = null; }
  if (response.ok && body && typeof body === "object") {
    try {
      render(body, text);
      hideState();
    } catch (error) {
      showState("error", "The order could not be displayed (" + error.message + ").");
    }
  } else if (response.status === 404) {
    showState("warn", "No order with id “" + id + "” was found.");
  } else if (response.status === 400) {
    showState("error", "“" + id + "” is not a valid order id: " + (body && body.error ? body.error : "bad request") + ".");
  } else if (response.status === 503) {
    const wait = Math.min(10, Number(response.headers.get("Retry-After")) || 2);
    if (attempt < 5) {
      showState("warn", "The service is starting and still loading orders; trying again in " + wait + " s…");
      setTimeout(() => { if (mine === lookup) show(id, attempt + 1); }, wait * 1000);
    } else {
      showState("error", "The service is not ready (" + (body && body.error ? body.error : "503") + "). Try again later.");
    }
  } else {
    showState("error", "Unexpected answer from the service: HTTP " + response.status + ".");
  }
}

// The lookup in the URL: `?id=`, `?track_number=` or `?customer_id=` (the first one present).
function lookupFromUrl() {
  const params = new URLSearchParams(location.search);
  for (const by of ["track_number", "customer_id", "id"]) {
    if (params.has(by)) return { by, value: (params.get(by) || "").trim() };
  }
  return { by: "id", value: "" };
}

// Puts the box's label, limit, hint and button in line with the choice.
function setMode(by) {
  const lookup = LOOKUPS[by] || LOOKUPS.id;
  const input = $("#id");
  $("#by").value = by in LOOKUPS ? by : "id";
  setText($("#id-label"), lookup.label);
  input.maxLength = lookup.max;
  input.placeholder = lookup.placeholder;
  setText($("#go"), lookup.button);
  for (const help of document.querySelectorAll("#lookup small[data-by]")) {
    help.hidden = help.dataset.by !== $("#by").value;
    if (!help.hidden) input.setAttribute("aria-describedby", help.id);
  }
}

function navigate(by, value) {
  const url = value ? "/?" + by + "=" + encodeURIComponent(value) : "/";
  if (location.pathname + location.search !== url) history.pushState({ by, value }, "", url);
  apply(by, value, false);
}

// Shows what a lookup asks for. Opening one order keeps whatever list is below it (so that a
// search's other results stay one click away), except at start, when the list is recent orders.
function apply(by, value, start) {
  setMode(by);
  $("#id").value = value;
  if (by === "id" || !(by in LOOKUPS) || !value) {
    show(value);
    if (start || !value) list(null);
  } else {
    show("");
    list({ by, value });
  }
}

let nextCursor = null;
let listed = null; // The search the list shows ({ by, value }), or null for recent orders.
let listing = 0; // Only the latest list request may change the list.

// Starts the list over: recent orders, or the orders that match `search`.
function list(search) {
  listed = search;
  const title = search
    ? "Orders with " + LOOKUPS[search.by].noun + " “" + search.value + "”"
    : "Recent orders";
  setText($("#recent-title"), title);
  if (search) document.title = title + " · ordersvc";
  $("#all-orders").hidden = !search;
  $("#recent tbody").replaceChildren();
  loadRecent(null);
}

async function loadRecent(before) {
  const mine = ++listing;
  const search = listed;
  const status = $("#recent-state");
  const older = $("#older");
  older.hidden = true;
  setText(status, "Loading…");
  status.hidden = false;
  let query = "/orders?limit=" + PAGE_SIZE;
  if (search) query += "&" + search.by + "=" + encodeURIComponent(search.value);
  if (before) query += "&before=" + encodeURIComponent(before);
  try {
    const response = await fetch(query, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (mine !== listing) return;
    if (!response.ok) {
      const reason = body.error || response.status;
      if (!search) setText(status, "Recent orders are unavailable: " + reason);
      else if (response.status === 400) setText(status, "“" + search.value + "” is not a valid " + LOOKUPS[search.by].noun + ": " + reason + ".");
      else setText(status, "The search is unavailable: " + reason);
      return;
    }
    const tbody = $("#recent tbody");
    for (const order of body.orders || []) {
      const row = document.createElement("tr");
      const link = document.createElement("a");
      link.href = "/?id=" + encodeURIComponent(order.order_uid);
      link.textContent = order.order_uid;
      link.className = "mono";
      link.addEventListener("click", (event) => {
        if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        navigate("id", order.order_uid);
        window.scrollTo({ top: 0 });
      });
      const first = document.createElement("td");
      first.append(link);
      row.append(first);
      cell(row, order.date_created, "mono");
      cell(row, order.customer_id);
      cell(row, order.track_number, "mono");
      tbody.append(row);
    }
    nextCursor = body.next || null;
    older.hidden = !nextCursor;
    const none = search
      ? "No orders match " + LOOKUPS[search.by].noun + " “" + search.value + "”."
      : "No orders stored yet.";
    setText(status, tbody.children.length === 0 ? none : "");
    status.hidden = tbody.children.length !== 0;
  } catch (error) {
    if (mine === listing) setText(status, "Cannot load " + (search ? "the matching" : "recent") + " orders (" + error.message + ").");
  }
}

async function copyJson() {
  const text = $("#raw").dataset.served || "";
  try {
    await navigator.clipboard.writeText(text);
    setText($("#copy-state"), "Copied.");
  } catch (error) {
    // Clipboard API unavailable (e.g. plain http on another host): select the text instead.
    $("#raw-details").open = true;
    const range = document.createRange();
    range.selectNodeContents($("#raw"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setText($("#copy-state"), "Press Ctrl+C (or ⌘C) to copy the selected JSON.");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    navigate($("#by").value, $("#id").value.trim());
  });
  $("#by").addEventListener("change", () => { setMode($("#by").value); $("#id").focus(); });
  $("#older").addEventListener("click", () => loadRecent(nextCursor));
  $("#copy").addEventListener("click", copyJson);
  window.addEventListener("popstate", () => {
    const { by, value } = lookupFromUrl();
    apply(by, value, false);
  });
  const { by, value } = lookupFromUrl();
  apply(by, value, true);
});
