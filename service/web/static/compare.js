"use strict";
// Compare: every job's curves overlaid per metric group (label "job name · metric"); jobs that
// still run are fetched again every few seconds.
(function () {
  const holder = document.getElementById("compare-data");
  if (!holder) return;
  const info = JSON.parse(holder.textContent);
  const charts = new SgmimCharts(document.getElementById("charts"));
  const running = new Set(info.jobs.filter((id, i) => !sgmim.terminal(info.statuses[i])));
  const thinned = new Set();

  async function load(id, index) {
    const answer = await sgmim.get(`/api/v1/jobs/${id}/series?points=1500`);
    if (!answer.ok) return;
    for (const [name, curve] of Object.entries(answer.data.curves)) {
      charts.set(name, curve.steps, curve.values, `${info.names[index]} · ${name}`);
      if (curve.downsampled) thinned.add(info.names[index]);
    }
    if (sgmim.terminal(answer.data.status)) running.delete(id);
    document.getElementById("curves-note").textContent =
      thinned.size ? `downsampled for display (bucket means): ${[...thinned].join(", ")}` : "";
  }

  Promise.all(info.jobs.map(load)).then(() => {
    if (running.size) {
      const stop = sgmim.every(5000, async () => {
        await Promise.all(info.jobs.map((id, i) => (running.has(id) ? load(id, i) : null)));
        if (!running.size) stop();
      });
    }
  });
})();
