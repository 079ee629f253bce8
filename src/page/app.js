"use strict";
// Every value from the server is set with textContent: order data is never parsed as HTML.
const form = document.getElementById("lookup");
const input = document.getElementById("id");
const status = document.getElementById("status");
const out = document.getElementById("order");

async function show(id) {
  out.hidden = true;
  status.textContent = "Loading…";
  try {
    const res = await fetch("/order/" + encodeURIComponent(id));
    const body = await res.json();
    if (res.ok) {
      status.textContent = "";
      out.textContent = JSON.stringify(body, null, 2);
      out.hidden = false;
    } else {
      status.textContent = body.error + " (" + body.order_uid + ")";
    }
  } catch (e) {
    status.textContent = "Network error: " + e.message;
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = input.value.trim();
  history.pushState(null, "", "/?id=" + encodeURIComponent(id));
  show(id);
});

window.addEventListener("popstate", () => load());

function load() {
  const id = new URLSearchParams(location.search).get("id");
  if (id) { input.value = id; show(id); }
}

async function recent() {
  const list = document.getElementById("recent");
  try {
    const res = await fetch("/orders?limit=20");
    const body = await res.json();
    for (const o of body.orders || []) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "/?id=" + encodeURIComponent(o.order_uid);
      a.textContent = o.order_uid;
      li.append(a, " " + o.date_created + " " + o.customer_id);
      list.append(li);
    }
  } catch (e) { /* the list is optional */ }
}

load();
recent();
