"use strict";
// A study: one bar chart per metric (mean over seeds, error bar = standard deviation, the seeds
// as dots). The page reloads when a cell moves on or the study's state changes (also a settled
// study's: a cell may be retried). Cancel stops the study (its jobs in flight cancelled); Retry
// resumes its stopped cells and clears the cancel.
(function () {
  const holder = document.getElementById("study-data");
  if (!holder) return;
  const info = JSON.parse(holder.textContent);
  const charts = document.getElementById("charts");
  for (const t of info.chart) {
    const metric = t.metric;
    if (!t.means.some((m) => m !== null)) continue;
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.metric = metric;
    charts.appendChild(box);
    const bars = { type: "bar", x: t.rows, y: t.means, name: "mean",
      error_y: { type: "data", array: t.stds.map((s) => s ?? 0), visible: true } };
    const dots = { type: "scatter", mode: "markers", name: "seeds", marker: { color: "black", size: 6 },
      x: t.rows.flatMap((row, i) => t.seeds[i].map(() => row)), y: t.seeds.flat() };
    Plotly.newPlot(box, [bars, dots], { title: { text: metric }, height: 300, showlegend: false,
      margin: { l: 50, r: 10, t: 40, b: 60 } }, { displaylogo: false, responsive: true });
  }
  const state = (cells) => cells.map((c) => `${c.id}:${c.stage}:${c.status}`).join(",");
  const stop = sgmim.every(5000, async () => {
    const answer = await sgmim.get(`/api/v1/studies/${encodeURIComponent(info.name)}`);
    if (!answer.ok) return;
    if (state(answer.data.cells) !== info.state || answer.data.state !== info.study_state) {
      stop();
      location.reload();
    }
  });
  for (const action of ["cancel", "retry"]) {
    const button = document.getElementById(action);
    button.addEventListener("click", async () => {
      button.disabled = true;
      const answer = await sgmim.post(`/api/v1/studies/${encodeURIComponent(info.name)}/${action}`);
      if (answer.ok) { stop(); location.reload(); return; }
      button.disabled = false;
      document.getElementById("action-result").textContent = `${action} refused: ` + sgmim.detail(answer.data);
    });
  }
})();
