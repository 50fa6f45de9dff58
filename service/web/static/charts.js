"use strict";
// Metric curves with plotly.js: one chart per group of metrics (losses, learning rate, gradient
// norm, throughput, validation, then one per other metric). Points arrive in bulk (a series
// fetch, already downsampled by the server) or one by one (SSE); a curve longer than MAX_POINTS
// is halved by averaging neighbours, so a long-running page stays light. Redraws are batched.
(function () {
  const MAX_POINTS = 4000;
  const GROUPS = [
    { key: "loss", title: "Losses", match: (n) => n === "loss" || n.startsWith("loss_") },
    { key: "lr", title: "Learning rate", match: (n) => n === "lr" },
    { key: "grad_norm", title: "Gradient norm", match: (n) => n === "grad_norm" },
    { key: "images_per_s", title: "Images / s", match: (n) => n === "images_per_s" },
    { key: "val", title: "Validation", match: (n) => n.startsWith("val_") },
  ];

  function groupOf(name) {
    const rank = GROUPS.findIndex((g) => g.match(name));
    if (rank >= 0) return { ...GROUPS[rank], rank };
    return { key: "m-" + name.replace(/[^A-Za-z0-9_-]/g, "_"), title: name, rank: GROUPS.length };
  }

  function halve(xs, ys) {
    const x = [], y = [];
    for (let i = 0; i + 1 < xs.length; i += 2) {
      x.push(xs[i]);
      const a = ys[i], b = ys[i + 1];
      y.push(a === null || b === null ? (a === null ? b : a) : (a + b) / 2);
    }
    if (xs.length % 2) { x.push(xs[xs.length - 1]); y.push(ys[ys.length - 1]); }
    return [x, y];
  }

  class Charts {
    constructor(container) {
      this.container = container;
      this.charts = new Map();   // group key -> {div, traces: Map(label -> trace), title}
      this.dirty = new Set();
      this.timer = null;
      this.revision = 0;
    }

    chart(metric) {
      const group = groupOf(metric);
      let chart = this.charts.get(group.key);
      if (!chart) {
        const div = document.createElement("div");
        div.className = "chart";
        div.id = "chart-" + group.key;
        div.dataset.rank = String(group.rank);
        // losses first, then learning rate, ...: whatever order the metrics arrive in
        const after = [...this.container.children].find((c) => Number(c.dataset.rank) > group.rank);
        this.container.insertBefore(div, after || null);
        chart = { div, title: group.title, traces: new Map() };
        this.charts.set(group.key, chart);
      }
      return chart;
    }

    trace(metric, label) {
      const chart = this.chart(metric);
      let trace = chart.traces.get(label);
      if (!trace) {
        trace = { x: [], y: [], name: label, type: "scatter", mode: "lines", line: { width: 1.6 }, marker: { size: 4 } };
        chart.traces.set(label, trace);
      }
      return [chart, trace];
    }

    // Replace a curve (label defaults to the metric name).
    set(metric, steps, values, label) {
      const [chart, trace] = this.trace(metric, label || metric);
      trace.x = steps.slice();
      trace.y = values.slice();
      this.touch(chart);
    }

    // Append one point; a step that goes back (a resumed attempt) replaces the tail.
    push(metric, step, value, label) {
      const [chart, trace] = this.trace(metric, label || metric);
      while (trace.x.length && trace.x[trace.x.length - 1] >= step) { trace.x.pop(); trace.y.pop(); }
      trace.x.push(step);
      trace.y.push(value);
      if (trace.x.length > MAX_POINTS) [trace.x, trace.y] = halve(trace.x, trace.y);
      this.touch(chart);
    }

    touch(chart) {
      this.dirty.add(chart);
      if (!this.timer) this.timer = setTimeout(() => this.draw(), 250);
    }

    draw() {
      this.timer = null;
      for (const chart of this.dirty) {
        for (const trace of chart.traces.values()) trace.mode = trace.x.length < 60 ? "lines+markers" : "lines";
        const layout = {
          title: { text: chart.title, font: { size: 13 } },
          margin: { l: 55, r: 10, t: 32, b: 40 },
          xaxis: { title: { text: "step", standoff: 4 } },
          legend: { orientation: "h", y: -0.32, font: { size: 11 } },
          showlegend: chart.traces.size > 1,
          uirevision: "keep",
          datarevision: ++this.revision,  // the traces' arrays change in place
        };
        if (chart.title === "Learning rate") layout.yaxis = { exponentformat: "e" };
        Plotly.react(chart.div, [...chart.traces.values()], layout, { displaylogo: false, responsive: true });
        chart.div.dataset.points = JSON.stringify(
          Object.fromEntries([...chart.traces.entries()].map(([k, t]) => [k, t.x.length])));
      }
      this.dirty.clear();
    }
  }

  window.SgmimCharts = Charts;
})();
