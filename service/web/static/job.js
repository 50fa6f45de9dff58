"use strict";
// One job: curves from the downsampled series, then live from the SSE stream (after the series'
// last_seq, so no point is drawn twice); the log tail, then followed live; cancel and resume.
(function () {
  const info = JSON.parse(document.getElementById("job-data").textContent);
  const base = `/api/v1/jobs/${info.id}`;
  const charts = new SgmimCharts(document.getElementById("charts"));
  const logBox = document.getElementById("log");
  const follow = document.getElementById("follow");
  const statusBadge = document.getElementById("job-status");
  const cancelButton = document.getElementById("cancel");
  const resumeButton = document.getElementById("resume");
  const result = document.getElementById("action-result");
  const MAX_LOG_LINES = 5000;
  const note = document.getElementById("curves-note");
  const NO_METRICS = "no metrics yet";
  let lastLogSeq = 0;
  let stopPolling = null;

  function setStatus(status) {
    statusBadge.textContent = status;
    statusBadge.className = "status s-" + status;
    cancelButton.hidden = !["queued", "running"].includes(status);
    resumeButton.hidden = !["failed", "cancelled"].includes(status);
  }

  function appendLog(lines) {
    if (!lines.length) return;
    logBox.append(document.createTextNode(lines.join("\n") + "\n"));
    while (logBox.childNodes.length > MAX_LOG_LINES / 10) logBox.removeChild(logBox.firstChild);
    if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
  }

  function connect(after) {
    const events = new EventSource(`${base}/events?after=${after}`);
    const pendingLog = [];
    let logTimer = null;
    events.addEventListener("metric", (event) => {
      const point = JSON.parse(event.data);
      if (point.step === null || point.step === undefined) return;
      charts.push(point.name, point.step, point.value);
      if (note.textContent === NO_METRICS) note.textContent = "";
    });
    events.addEventListener("log", (event) => {
      const line = JSON.parse(event.data);
      if (line.seq <= lastLogSeq) return;
      lastLogSeq = line.seq;
      pendingLog.push(line.line);
      if (!logTimer) logTimer = setTimeout(() => { logTimer = null; appendLog(pendingLog.splice(0)); }, 200);
    });
    events.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      setStatus(data.status);
      if (data.final) {
        events.close();
        if (stopPolling) stopPolling();
      }
    });
  }

  function formatDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    return m ? `${m}m ${String(r).padStart(2, "0")}s` : `${r}s`;
  }

  async function refreshProgress() {
    const answer = await sgmim.get(base);
    if (!answer.ok) return;
    const job = answer.data;
    const p = job.progress;
    const box = document.getElementById("progress");
    const pct = job.status === "succeeded" ? 100 : (p.total_steps ? 100 * (p.step || 0) / p.total_steps : null);
    box.textContent = "";
    if (pct !== null) {
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.style.width = pct.toFixed(1) + "%";
      bar.appendChild(fill);
      box.append(bar, " ");
    }
    box.append(`step ${p.step || 0} of ${p.total_steps || "?"}` + (p.epoch !== null ? `, epoch ${p.epoch.toFixed(2)}` : ""));
    if (job.started_at) {
      const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
      document.getElementById("duration").textContent = formatDuration((end - Date.parse(job.started_at)) / 1000);
    }
  }

  async function start() {
    const series = await sgmim.get(`${base}/series?points=2000`);
    if (!series.ok) {
      document.getElementById("curves-note").textContent = "curves unavailable: " + sgmim.detail(series.data);
      return;
    }
    const curves = series.data.curves;
    const names = Object.keys(curves);
    for (const name of names) charts.set(name, curves[name].steps, curves[name].values);
    const thinned = names.filter((n) => curves[n].downsampled);
    document.getElementById("curves-note").textContent =
      names.length === 0 ? NO_METRICS :
      thinned.length ? `downsampled for display (bucket means): ${thinned.map((n) => `${n} ${curves[n].points} points`).join(", ")}` : "";
    const logs = await sgmim.get(`${base}/logs?tail=500`);
    if (logs.ok) {
      const lines = logs.data.lines;
      if (lines.length) lastLogSeq = lines[lines.length - 1].seq;
      appendLog(lines.map((l) => l.line));
    }
    connect(series.data.last_seq);
    if (!sgmim.terminal(info.status)) stopPolling = sgmim.every(3000, refreshProgress);
  }

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    const answer = await sgmim.post(`${base}/cancel`);
    cancelButton.disabled = false;
    result.textContent = answer.ok ? "" : "cancel refused: " + sgmim.detail(answer.data);
    if (answer.ok) setStatus(answer.data.status);
  });

  resumeButton.addEventListener("click", async () => {
    resumeButton.disabled = true;
    const answer = await sgmim.post(`${base}/resume`);
    if (answer.ok) { window.location.reload(); return; }
    resumeButton.disabled = false;
    result.textContent = "resume refused: " + sgmim.detail(answer.data);
  });

  start();
})();
