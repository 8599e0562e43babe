"""The page of ``simsearch map``: one self-contained HTML file (its CSS and script inline, its thumbnails as
``data:`` URIs, a Content-Security-Policy that forbids loading anything else) that draws every point on a
``<canvas>``, so it stays usable at 100,000 points and more.

The data travel as JSON inside ``<script type="application/json">``, with every ``<``, ``>`` and ``&`` written as
a ``\\u`` escape, so no path or label (``</script>`` included) can end the element; the script reads it with
``JSON.parse`` and puts user data into the page only as text (``textContent``), never as HTML.

The script exposes ``window.simsearchMap`` for tests and tools: ``count``, ``drawn`` (points drawn in view),
``screenPosition(i)`` (where point ``i`` is, in the window's CSS pixels), ``point(i)`` (its path, label and
whether it has a thumbnail) and ``hovered()`` (the point under the pointer, or -1).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

#: What the page may load: nothing but itself and its ``data:`` images.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def json_for_script(data: Any) -> str:
    """``data`` as JSON that can sit inside a ``<script>`` element: ``<``, ``>``, ``&`` and the JavaScript line
    separators escaped, so that no string in it can close the element or open a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(char, escape)
    return text.replace("\u2029", "\\u2029")


def render_page(title: str, data: dict[str, Any]) -> str:
    """The whole page for ``data`` (see ``simsearch.latent.map._page_data``)."""
    values = {"CSP": html.escape(CSP), "TITLE": html.escape(title), "DATA": json_for_script(data)}
    return re.sub(r"@@(CSP|TITLE|DATA)@@", lambda m: values[m.group(1)], PAGE)  # one pass: no value is re-read


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="@@CSP@@">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>
  * { box-sizing: border-box; }
  html, body { margin: 0; height: 100%; font: 14px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif;
    color: #1d1d1f; background: #fff; }
  body { display: flex; flex-direction: column; }
  header { display: flex; flex-wrap: wrap; gap: .4rem 1rem; align-items: center; padding: .45rem .8rem;
    border-bottom: 1px solid #ddd; }
  h1 { font-size: 1rem; margin: 0; }
  .note { color: #555; }
  header input[type=search] { width: 18rem; padding: .2rem .4rem; }
  #main { position: relative; flex: 1; min-height: 0; }
  canvas { position: absolute; inset: 0; width: 100%; height: 100%; cursor: crosshair; touch-action: none; }
  canvas.dragging { cursor: grabbing; }
  #legend { position: absolute; top: .5rem; right: .5rem; max-height: calc(100% - 1rem); max-width: 16rem;
    overflow: auto; background: rgba(255,255,255,.92); border: 1px solid #ddd; border-radius: 4px;
    padding: .35rem .5rem; font-size: 12.5px; }
  #legend h2 { font-size: 12.5px; margin: 0 0 .25rem; }
  #legend ul { list-style: none; margin: 0; padding: 0; }
  #legend li { display: flex; gap: .4rem; align-items: center; cursor: pointer; user-select: none;
    white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  #legend li.off { opacity: .35; }
  #legend .count { color: #777; margin-left: auto; padding-left: .5rem; }
  .swatch { flex: none; width: .8rem; height: .8rem; border-radius: 2px; }
  #tip { position: fixed; pointer-events: none; background: #fff; border: 1px solid #bbb; border-radius: 4px;
    box-shadow: 0 2px 8px rgba(0,0,0,.18); padding: .35rem; max-width: 22rem; font-size: 12.5px; z-index: 2; }
  #tip img { display: block; width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated;
    background: #f4f4f4; margin-bottom: .25rem; }
  #tip img[hidden] { display: none; }
  #tip .path { word-break: break-all; }
  #tip .label { color: #555; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <span id="info" class="note"></span>
  <input type="search" id="search" placeholder="Search paths and labels" aria-label="Search paths and labels">
  <span id="matches" class="note" aria-live="polite"></span>
  <label><input type="checkbox" id="density"> Density</label>
  <button type="button" id="reset">Reset view</button>
</header>
<div id="main">
  <canvas id="map" aria-label="2-D map of the embeddings"></canvas>
  <div id="legend"><h2 id="legend-title"></h2><ul id="legend-items"></ul></div>
</div>
<div id="tip" hidden><img id="tip-img" alt=""><div id="tip-path" class="path"></div>
  <div id="tip-label" class="label"></div></div>
<script type="application/json" id="map-data">@@DATA@@</script>
<script>
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("map-data").textContent);
  const n = data.n;
  const $ = (id) => document.getElementById(id);

  function floats(b64) {
    const bin = atob(b64);
    const view = new DataView(new ArrayBuffer(bin.length));
    for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
    const out = new Float32Array(bin.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
    return out;
  }
  const xs = floats(data.x), ys = floats(data.y);
  const labelOf = data.label;               // per point: an index into data.labels, or -1 (no label)
  const labelNames = data.labels, colours = data.colours;
  const dirs = data.dirs, dirOf = data.dir, names = data.name;
  const thumbs = new Map();
  data.thumbs.index.forEach((i, k) => thumbs.set(i, data.thumbs.png[k]));
  const path = (i) => dirs[dirOf[i]] + names[i];
  const labelText = (i) => (labelOf[i] < 0 ? "no label" : labelNames[labelOf[i]]);
  const colourOf = (g) => (g < 0 ? data.none_colour : colours[g]);

  // Header and legend: every user string goes in as text.
  $("title").textContent = data.title;
  document.title = data.title + " — latent map";
  const shown = data.thumbs.index.length;
  $("info").textContent = `${n.toLocaleString()} points · ${data.method}` +
    (shown < n ? ` · thumbnails for a sample of ${shown.toLocaleString()}` : "");

  // Points grouped by label (drawing order: largest groups first, so small ones stay visible).
  const groups = new Map();
  for (let i = 0; i < n; i++) {
    const g = labelOf[i];
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(i);
  }
  const order = [...groups.keys()].sort((a, b) => groups.get(b).length - groups.get(a).length);
  const hidden = new Set();

  const legendItems = $("legend-items");
  const anyLabel = labelNames.length > 0;
  $("legend-title").textContent = anyLabel ? `${labelNames.length.toLocaleString()} labels` : "no labels";
  const legendOrder = [...groups.keys()].sort((a, b) =>
    a < 0 ? 1 : b < 0 ? -1 : labelNames[a] < labelNames[b] ? -1 : labelNames[a] > labelNames[b] ? 1 : 0);
  for (const g of legendOrder) {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(g);
    const name = document.createElement("span");
    name.textContent = g < 0 ? (anyLabel ? "no label" : "no labels") : labelNames[g];
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = groups.get(g).length.toLocaleString();
    li.append(swatch, name, count);
    li.title = "show or hide these points";
    li.addEventListener("click", () => {
      if (hidden.has(g)) hidden.delete(g); else hidden.add(g);
      li.classList.toggle("off", hidden.has(g));
      schedule();
    });
    legendItems.append(li);
  }

  // The view: screen = (x * k + tx, -y * k + ty), in CSS pixels of the canvas.
  const canvas = $("map"), ctx = canvas.getContext("2d");
  let width = 0, height = 0, dpr = 1, k = 1, tx = 0, ty = 0;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, xs[i]); x1 = Math.max(x1, xs[i]); y0 = Math.min(y0, ys[i]); y1 = Math.max(y1, ys[i]);
  }
  if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  let fitted = 1;
  function resetView() {
    const margin = 24;
    k = Math.min((width - 2 * margin) / (x1 - x0), (height - 2 * margin) / (y1 - y0));
    if (!(k > 0)) k = 1;
    fitted = k;
    tx = width / 2 - k * (x0 + x1) / 2;
    ty = height / 2 + k * (y0 + y1) / 2;
  }
  function resize() {
    const rect = canvas.getBoundingClientRect();
    const first = width === 0;
    const cx = (width / 2 - tx) / k, cy = (ty - height / 2) / k;
    width = Math.max(1, rect.width); height = Math.max(1, rect.height);
    dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr); canvas.height = Math.round(height * dpr);
    if (first) resetView(); else { tx = width / 2 - k * cx; ty = height / 2 + k * cy; }
    schedule();
  }

  // Search: points whose path or label holds the text (case-insensitive).
  let query = "", matched = null, lowered = null;
  function search(text) {
    query = text.trim().toLowerCase();
    if (!query) { matched = null; $("matches").textContent = ""; schedule(); return; }
    if (!lowered) lowered = Array.from({ length: n }, (_, i) => (path(i) + "\\u0000" + labelText(i)).toLowerCase());
    matched = new Uint8Array(n);
    let count = 0;
    for (let i = 0; i < n; i++) if (lowered[i].includes(query)) { matched[i] = 1; count++; }
    $("matches").textContent = `${count.toLocaleString()} ${count === 1 ? "match" : "matches"}`;
    schedule();
  }

  // Drawing: points one by one, their alpha and size falling as they crowd; or the density layer (many points).
  const baseSize = n <= 1000 ? 6 : n <= 10000 ? 4 : n <= 50000 ? 3 : 2.2;
  const baseAlpha = Math.max(0.18, Math.min(0.9, Math.sqrt(3000 / n)));
  $("density").checked = n >= 20000;
  const inView = (sx, sy) => sx >= -8 && sy >= -8 && sx <= width + 8 && sy <= height + 8;
  let drawn = 0;
  // The density layer: each 2-pixel cell takes the mean colour of its points and an opacity that grows with their
  // number (log-scaled), so that crowds read as crowds and their labels still show.
  const rgbOf = new Map([...groups.keys()].map((g) => {
    const hex = colourOf(g);
    return [g, [1, 3, 5].map((at) => parseInt(hex.slice(at, at + 2), 16))];
  }));
  function drawDensity() {
    const cell = 2, cw = Math.ceil(width / cell), ch = Math.ceil(height / cell), size = cw * ch;
    const counts = new Float32Array(size), sums = new Float32Array(3 * size);
    let top = 0;
    for (const g of order) {
      if (hidden.has(g)) continue;
      const [r, gr, b] = rgbOf.get(g);
      for (const i of groups.get(g)) {
        const cx = Math.floor((xs[i] * k + tx) / cell), cy = Math.floor((-ys[i] * k + ty) / cell);
        if (cx < 0 || cy < 0 || cx >= cw || cy >= ch) continue;
        const j = cy * cw + cx, c = ++counts[j];
        sums[3 * j] += r; sums[3 * j + 1] += gr; sums[3 * j + 2] += b;
        if (c > top) top = c;
        drawn++;
      }
    }
    if (!top) return;
    const off = document.createElement("canvas");
    off.width = cw; off.height = ch;
    const octx = off.getContext("2d"), image = octx.createImageData(cw, ch), px = image.data;
    const scale = 1 / Math.log1p(top), fade = matched ? 0.15 : 1;
    for (let j = 0; j < size; j++) {
      const c = counts[j];
      if (!c) continue;
      px[4 * j] = sums[3 * j] / c; px[4 * j + 1] = sums[3 * j + 1] / c; px[4 * j + 2] = sums[3 * j + 2] / c;
      px[4 * j + 3] = Math.round(255 * fade * (0.55 + 0.45 * Math.log1p(c) * scale));
    }
    octx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, cw * cell, ch * cell);
  }
  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    const density = $("density").checked;
    const size = baseSize * Math.min(3, Math.sqrt(k / fitted));
    const half = size / 2;
    drawn = 0;
    if (density) drawDensity();
    for (const g of density ? [] : order) {
      if (hidden.has(g)) continue;
      ctx.fillStyle = colourOf(g);
      ctx.globalAlpha = matched ? 0.12 : baseAlpha;
      for (const i of groups.get(g)) {
        const sx = xs[i] * k + tx, sy = -ys[i] * k + ty;
        if (!inView(sx, sy)) continue;
        ctx.fillRect(sx - half, sy - half, size, size);
        drawn++;
      }
    }
    if (matched) {  // the matches on top, full colour, outlined
      ctx.globalAlpha = 1;
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1;
      const big = Math.max(size * 1.8, 6);
      for (const g of order) {
        if (hidden.has(g)) continue;
        ctx.fillStyle = colourOf(g);
        for (const i of groups.get(g)) {
          if (!matched[i]) continue;
          const sx = xs[i] * k + tx, sy = -ys[i] * k + ty;
          if (!inView(sx, sy)) continue;
          ctx.fillRect(sx - big / 2, sy - big / 2, big, big);
          ctx.strokeRect(sx - big / 2, sy - big / 2, big, big);
        }
      }
    }
    if (hover >= 0) {
      ctx.globalAlpha = 1;
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      const sx = xs[hover] * k + tx, sy = -ys[hover] * k + ty;
      ctx.beginPath();
      ctx.arc(sx, sy, Math.max(size, 5), 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    canvas.dataset.points = String(drawn);
  }
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  // Hover: a grid over the data bounds finds the nearest shown point within a few pixels.
  const G = Math.max(1, Math.min(512, Math.round(Math.sqrt(n / 4))));
  const cellOf = (i) => Math.min(G - 1, Math.floor((xs[i] - x0) / (x1 - x0) * G)) +
    G * Math.min(G - 1, Math.floor((ys[i] - y0) / (y1 - y0) * G));
  const start = new Int32Array(G * G + 1), members = new Int32Array(n);
  for (let i = 0; i < n; i++) start[cellOf(i) + 1]++;
  for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
  const fill = start.slice(0, G * G);
  for (let i = 0; i < n; i++) members[fill[cellOf(i)]++] = i;
  function nearest(mx, my, radius) {
    const dx = (mx - tx) / k, dy = (ty - my) / k, r = radius / k;
    const ca = Math.max(0, Math.floor((dx - r - x0) / (x1 - x0) * G)), cb = Math.min(G - 1, Math.floor((dx + r - x0) / (x1 - x0) * G));
    const ra = Math.max(0, Math.floor((dy - r - y0) / (y1 - y0) * G)), rb = Math.min(G - 1, Math.floor((dy + r - y0) / (y1 - y0) * G));
    let best = -1, bestD = radius * radius;
    for (let row = ra; row <= rb; row++) {
      for (let col = ca; col <= cb; col++) {
        const c = row * G + col;
        for (let m = start[c]; m < start[c + 1]; m++) {
          const i = members[m];
          if (hidden.has(labelOf[i]) || (matched && !matched[i])) continue;
          const ex = xs[i] * k + tx - mx, ey = -ys[i] * k + ty - my, d = ex * ex + ey * ey;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  const tip = $("tip"), tipImg = $("tip-img");
  let hover = -1;
  function showTip(i, clientX, clientY) {
    if (i !== hover) { hover = i; schedule(); }
    if (i < 0) { tip.hidden = true; return; }
    const png = thumbs.get(i);
    if (png) { tipImg.src = "data:image/png;base64," + png; tipImg.hidden = false; }
    else { tipImg.removeAttribute("src"); tipImg.hidden = true; }
    $("tip-path").textContent = path(i);
    $("tip-label").textContent = labelText(i) + (png || shown === n ? "" : " · no thumbnail (not in the sample)");
    tip.hidden = false;
    const pad = 14, box = tip.getBoundingClientRect();
    let left = clientX + pad, top = clientY + pad;
    if (left + box.width > window.innerWidth) left = clientX - pad - box.width;
    if (top + box.height > window.innerHeight) top = clientY - pad - box.height;
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
  }

  // Zoom (wheel, about the pointer), pan (drag), reset.
  let drag = null;
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect(), mx = e.clientX - rect.left, my = e.clientY - rect.top;
    const f = Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015));
    const next = Math.min(fitted * 5000, Math.max(fitted / 20, k * f));
    tx = mx - (mx - tx) * (next / k); ty = my - (my - ty) * (next / k); k = next;
    schedule();
  }, { passive: false });
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, tx, ty };
    canvas.setPointerCapture(e.pointerId);
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointerup", (e) => {
    drag = null;
    canvas.releasePointerCapture(e.pointerId);
    canvas.classList.remove("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    if (drag) {
      tx = drag.tx + e.clientX - drag.x; ty = drag.ty + e.clientY - drag.y;
      tip.hidden = true;
      schedule();
      return;
    }
    const rect = canvas.getBoundingClientRect();
    showTip(nearest(e.clientX - rect.left, e.clientY - rect.top, 10), e.clientX, e.clientY);
  });
  canvas.addEventListener("pointerleave", () => showTip(-1, 0, 0));
  $("reset").addEventListener("click", () => { resetView(); schedule(); });
  $("density").addEventListener("change", schedule);
  $("search").addEventListener("input", (e) => search(e.target.value));
  window.addEventListener("resize", resize);

  window.simsearchMap = {
    count: n,
    get drawn() { return drawn; },
    screenPosition(i) {
      const rect = canvas.getBoundingClientRect();
      return { x: rect.left + xs[i] * k + tx, y: rect.top - ys[i] * k + ty };
    },
    point(i) { return { path: path(i), label: labelOf[i] < 0 ? null : labelNames[labelOf[i]], thumbnail: thumbs.has(i) }; },
    hovered() { return hover; },
  };
  resize();
})();
</script>
</body>
</html>
"""
