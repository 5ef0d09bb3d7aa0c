// Hand-written SVG line charts: one <path> per series and one <circle class="pt"> per data point,
// so what a chart shows can be read from the DOM (the browser tests do).
(() => {
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_POINTS = 600;

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
  .map((sec) => sec * 1000);

function niceTicks(lo, hi, count, pad, time, integer) {
  if (!(hi > lo)) { const d = pad || Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  let step;
  if (time) {
    step = TIME_STEPS.find((s) => s >= raw) || Math.ceil(raw / 86400000) * 86400000;
  } else {
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    if (integer) step = Math.max(1, Math.ceil(step));
  }
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let t = start; t <= hi + step * 0.5; t += step) ticks.push(Number(t.toPrecision(12)));
  return { ticks, step };
}

function tickFormat(step) {
  const decimals = Math.min(6, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  return (v) => (Math.abs(v) >= 1e4 ? fmtNum(v) : v.toFixed(decimals));
}

function fmtNum(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

function fmtClock(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

// series: [{name, color, points: [[x, y], ...]}]; opts: {xFormat, xLabel, yLabel, id}
function lineChart(series, opts) {
  opts = opts || {};
  const W = 640, H = 230, L = 52, R = 16, T = 24, B = 34;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  if (opts.id) svg.id = opts.id;
  const all = [];
  for (const s of series) {
    s.points = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1])).slice(-MAX_POINTS);
    all.push(...s.points);
  }
  svg.dataset.points = String(all.length);
  if (!all.length) {
    const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" });
    t.textContent = opts.empty || "no data yet";
    svg.appendChild(t);
    return svg;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const xn = niceTicks(Math.min(...xs), Math.max(...xs), 5, opts.xPad, opts.time, opts.integer);
  const yn = niceTicks(Math.min(...ys), Math.max(...ys), 4);
  const xt = xn.ticks, yt = yn.ticks, yf = tickFormat(yn.step);
  const x0 = Math.min(xt[0], ...xs), x1 = Math.max(xt[xt.length - 1], ...xs);
  const y0 = Math.min(yt[0], ...ys), y1 = Math.max(yt[yt.length - 1], ...ys);
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const xf = opts.time ? fmtClock : opts.xFormat || tickFormat(xn.step);
  const axes = svgEl("g", { class: "axes" });
  for (const t of yt) {
    if (t < y0 || t > y1) continue;
    axes.appendChild(svgEl("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
    const lab = svgEl("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" });
    lab.textContent = yf(t);
    axes.appendChild(lab);
  }
  const xticks = xt.filter((t) => t >= x0 && t <= x1);
  for (const t of xticks.length > 7 ? xticks.filter((_, i) => i % 2 === 0) : xticks) {
    const edge = sx(t) > W - R - 30 ? "end" : sx(t) < L + 20 ? "start" : "middle";
    const lab = svgEl("text", { x: sx(t), y: H - B + 16, "text-anchor": edge });
    lab.textContent = xf(t);
    axes.appendChild(lab);
  }
  if (opts.yLabel) {
    const lab = svgEl("text", { x: 4, y: 12, class: "unit" });
    lab.textContent = opts.yLabel;
    axes.appendChild(lab);
  }
  if (opts.xLabel) {
    const lab = svgEl("text", { x: W - R, y: H - 3, "text-anchor": "end", class: "unit" });
    lab.textContent = opts.xLabel;
    axes.appendChild(lab);
  }
  svg.appendChild(axes);
  series.forEach((s, i) => {
    const color = s.color || ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"][i % 5];
    const g = svgEl("g", { class: "series", "data-name": s.name, "data-points": s.points.length });
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    g.appendChild(svgEl("path", { d, stroke: color, fill: "none", "stroke-width": 1.8 }));
    const dots = s.points.length <= 120;
    for (const p of s.points) {
      const c = svgEl("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: dots ? 2.6 : 0.8,
                                  fill: color, class: "pt" });
      const tip = svgEl("title");
      tip.textContent = `${s.name}: ${Number(p[1].toPrecision(6))} at ${opts.time ? fmtClock(p[0]) : p[0]}`;
      c.appendChild(tip);
      g.appendChild(c);
    }
    svg.appendChild(g);
  });
  if (series.length > 1) {
    let x = L + 8;
    series.forEach((s, i) => {
      const color = s.color || ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"][i % 5];
      svg.appendChild(svgEl("rect", { x: x + 60, y: 3, width: 10, height: 10, fill: color }));
      const t = svgEl("text", { x: x + 74, y: 12, class: "legend" });
      t.textContent = s.name;
      svg.appendChild(t);
      x += 24 + 7 * s.name.length;
    });
  }
  return svg;
}

window.charts = { lineChart, fmtClock, fmtNum };
})();
