"use strict";
// Shared helpers of the dashboard pages. Requests go to this server only; the browser adds the
// session cookie by itself, and every state-changing request carries the CSRF header.
window.sgmim = {
  csrfHeader: "X-SGMIM-CSRF",

  async request(method, url, body) {
    const headers = { "Accept": "application/json" };
    const options = { method, headers, credentials: "same-origin" };
    if (method !== "GET") headers[this.csrfHeader] = "1";
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    if (response.status === 401) {
      window.location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { ok: response.ok, status: response.status, data };
  },

  get(url) { return this.request("GET", url); },
  post(url, body) { return this.request("POST", url, body); },

  detail(data) {
    if (!data) return "no answer";
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) return data.detail.map((e) => `${e.loc.join(".")}: ${e.msg}`).join("; ");
    return JSON.stringify(data.detail || data);
  },

  // Run fn every `ms` while the page is visible; returns a stop function.
  every(ms, fn) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try { await fn(); } catch (e) { /* the next tick retries */ }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
    return () => { stopped = true; clearTimeout(timer); };
  },

  terminal(status) { return ["succeeded", "failed", "cancelled"].includes(status); },
};
