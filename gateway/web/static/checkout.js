// Hosted checkout: follow the payment's status without reloading, by a bounded poll of the status
// endpoint (same origin, authorised by the client secret in its URL). Paid: go back to the shop.
// Expired, cancelled or otherwise changed: reload, and the server renders the page for that state.
"use strict";
(() => {
  const main = document.getElementById("main");
  const statusUrl = main && main.dataset.statusUrl;
  if (!statusUrl) return;
  const live = document.getElementById("status");
  const intervalMs = Number(main.dataset.pollIntervalMs) || 2000;
  const pollsMax = Number(main.dataset.pollCountMax) || 450;
  const requestTimeoutMs = 5000;
  const shown = main.dataset.state;
  let polls = 0;

  const say = (text) => { if (live.textContent !== text) live.textContent = text; };

  async function poll() {
    polls += 1;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), requestTimeoutMs);
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, cache: "no-store",
                                                signal: abort.signal });
      if (response.ok) {
        const state = await response.json();
        if (state.redirect_url) {
          say(main.dataset.msgPaid);
          window.location.replace(state.redirect_url);
          return;
        }
        if (state.status !== shown) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // A lost request is retried at the next tick, within the same bound.
    } finally {
      clearTimeout(timer);
    }
    if (polls >= pollsMax) {
      say(main.dataset.msgStillWaiting);
      document.getElementById("reload").hidden = false;
      return;
    }
    setTimeout(poll, intervalMs);
  }

  setTimeout(poll, intervalMs);
})();
