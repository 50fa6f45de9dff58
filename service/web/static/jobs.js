"use strict";
// The jobs list: the rows refresh every few seconds (same filters and page), the check boxes
// pick jobs for the compare view.
(function () {
  const table = document.getElementById("jobs-table");
  const compareButton = document.getElementById("compare-selected");
  const live = document.getElementById("live-state");
  const picked = new Set();

  function syncPicks() {
    for (const box of table.querySelectorAll("input.pick")) box.checked = picked.has(box.value);
    compareButton.disabled = picked.size < 1;
  }

  table.addEventListener("change", (event) => {
    const box = event.target;
    if (!box.classList.contains("pick")) return;
    if (box.checked) picked.add(box.value); else picked.delete(box.value);
    syncPicks();
  });

  compareButton.addEventListener("click", () => {
    window.location.assign("/compare?jobs=" + encodeURIComponent([...picked].join(",")));
  });

  const params = new URLSearchParams(location.search);
  params.set("rows", "1");
  const url = location.pathname + "?" + params.toString();
  sgmim.every(3000, async () => {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) { live.classList.add("paused"); live.textContent = "not refreshing"; return; }
    const html = await response.text();
    const holder = document.createElement("table");
    holder.innerHTML = html;
    const rows = holder.querySelector("tbody");
    if (rows) document.getElementById("job-rows").replaceWith(rows);
    live.classList.remove("paused");
    live.textContent = "live";
    syncPicks();
  });
})();
