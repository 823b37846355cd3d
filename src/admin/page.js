// Keeps the stats page live: fetches a fresh copy of the page every few
// seconds and swaps in its <main>, keeping the scroll position. Says so
// plainly when the node stops answering.
"use strict";
(function () {
  const updated = document.getElementById("updated");
  const every = 1000 * (Number(updated && updated.dataset.refresh) || 2);
  async function refresh() {
    try {
      const r = await fetch(window.location.pathname, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("status");
      const freshUpdated = doc.getElementById("updated");
      if (!fresh || !freshUpdated) throw new Error("unexpected page");
      document.getElementById("status").replaceWith(fresh);
      updated.textContent = freshUpdated.textContent;
      updated.classList.remove("stale");
    } catch (e) {
      updated.textContent = "not answering (" + e.message + "); retrying";
      updated.classList.add("stale");
    } finally {
      setTimeout(refresh, every);
    }
  }
  setTimeout(refresh, every);
})();
