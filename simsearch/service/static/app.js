// The simsearch page: search a collection with dropped images, verify a pair, link the latent map.
// Everything user-given (file names, labels, paths, error text) is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "simsearch-token";
let lastQuery = null; // the files of the last search, searched again when k, open set or the collection change
let objectUrls = []; // query previews, revoked when the results are replaced

class Unauthorised extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// A URL for an <img> or a link: it cannot carry a header, so the token travels as ?token=.
function withToken(url) {
  const t = token();
  return t ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(t)}` : url;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

// fetch with the token; an error answer ({error, remedy}) becomes an Error whose message is "error — remedy".
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new Error("cannot reach the server — is simsearch serve still running?");
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").hidden = false;
    $("token-input").focus();
    throw new Unauthorised("this server needs an access token — enter it below");
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      /* not JSON: report the status */
    }
    const what = (body && body.error) || `${response.status} ${response.statusText}`;
    throw new Error(body && body.remedy ? `${what} — ${body.remedy}` : what);
  }
  return response.json();
}

function fail(error) {
  showMessage(error.message);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// "&threshold=X" when the input holds one; blank: the model's calibrated threshold (the server's "auto").
function thresholdParam(id) {
  const value = $(id).value.trim();
  return value ? `&threshold=${encodeURIComponent(value)}` : "";
}

function fixed(x, digits = 4) {
  return typeof x === "number" ? x.toFixed(digits) : "—";
}

function percent(x) {
  return typeof x === "number" ? `${Math.round(x * 100)}%` : "—";
}

// --- collections ----------------------------------------------------------------------------------------------

async function loadCollections() {
  const { collections = [], models = [] } = await api("/collections");
  const select = $("collection");
  const previous = select.value;
  select.replaceChildren(...collections.map((name) => new Option(name, name)));
  if (collections.includes(previous)) select.value = previous;
  $("collection-note").textContent = collections.length ? "" : "no collections: run simsearch index first";

  const source = $("verify-source");
  const kept = source.value;
  source.replaceChildren();
  for (const [kind, label, names] of [
    ["collection", "Collections", collections],
    ["model", "Models", models],
  ]) {
    if (!names.length) continue;
    const group = el("optgroup");
    group.label = label;
    for (const name of names) group.append(new Option(name, `${kind}:${name}`));
    source.append(group);
  }
  if ([...source.options].some((o) => o.value === kept)) source.value = kept;
  showMessage("");
  checkMap();
}

// The latent map is optional: show the link only when the server has one for this collection.
async function checkMap() {
  const link = $("map-link");
  link.hidden = true;
  const name = $("collection").value;
  if (!name) return;
  const url = `/collections/${encodeURIComponent(name)}/map`;
  try {
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    let response = await fetch(url, { method: "HEAD", headers });
    if (response.status === 405) response = await fetch(url, { headers }); // a server that answers GET only
    if (response.ok && $("collection").value === name) {
      link.href = withToken(url);
      link.hidden = false;
    }
  } catch (e) {
    /* no map: nothing to show */
  }
}

// --- search ---------------------------------------------------------------------------------------------------

async function search(files) {
  const name = $("collection").value;
  if (!name) return showMessage("no collection to search: run simsearch index first");
  if (!files.length) return;
  lastQuery = files;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const k = Math.max(1, parseInt($("k").value, 10) || 9);
  let url = `/collections/${encodeURIComponent(name)}/query?k=${k}`;
  if ($("open-set").checked) url += `&open_set=true${thresholdParam("threshold")}`;
  $("search-status").textContent = `Searching ${name}…`;
  try {
    const answers = await api(url, { method: "POST", body: form });
    showMessage("");
    renderResults(name, files, answers);
    $("search-status").textContent = "";
  } catch (e) {
    $("search-status").textContent = "";
    fail(e);
  }
}

function renderResults(name, files, answers) {
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
  const cards = answers.map((answer, i) => {
    const card = el("article", "result");
    const head = el("div", "result-head");
    if (files[i]) {
      const preview = el("img", "preview");
      preview.src = URL.createObjectURL(files[i]);
      preview.alt = `query ${answer.query}`;
      objectUrls.push(preview.src);
      head.append(preview);
    }
    const summary = el("div", "summary");
    summary.append(el("h3", "query-name", answer.query));
    const vote = el("p", "vote");
    if (answer.unknown) {
      vote.append(el("strong", "unknown", "unknown"));
      if (answer.reason) vote.append(` — ${answer.reason}`);
    } else if (answer.vote !== null && answer.vote !== undefined) {
      const count = (answer.votes || {})[answer.vote];
      const share = count ? `${count} of ${answer.neighbours.length} neighbours` : "of the neighbours";
      vote.append(el("strong", "label", answer.vote), ` — ${share} (${percent(answer.vote_share)})`);
    } else {
      vote.textContent = "no vote: the neighbours have no labels";
    }
    summary.append(vote);
    if (answer.unfamiliar === true) {
      summary.append(
        el("p", "unfamiliar", "Unfamiliar input: unlike the images the model was trained on; treat the neighbours with care."),
      );
    }
    if (typeof answer.threshold === "number") summary.append(el("p", "note", `threshold ${fixed(answer.threshold)}`));
    head.append(summary);

    const grid = el("ol", "neighbours");
    for (const n of answer.neighbours) {
      const cell = el("li", "neighbour");
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.alt = n.path;
      img.src = withToken(`/collections/${encodeURIComponent(name)}/images/${encodeURIComponent(n.id)}?thumb=1`);
      const caption = el("div", "caption");
      const line = el("div", "line");
      line.append(el("span", "rank", `#${n.rank}`), el("span", "distance", fixed(n.distance)));
      caption.append(line, el("div", "label", n.label ?? "—"), el("div", "path", n.path));
      cell.title = n.root ? `${n.root}/${n.path}` : n.path;
      cell.append(img, caption);
      grid.append(cell);
    }
    card.append(head, grid);
    return card;
  });
  $("results").replaceChildren(...cards);
}

function setUpSearch() {
  const drop = $("drop");
  const input = $("query-file");
  input.addEventListener("change", () => search([...input.files]));
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    search([...e.dataTransfer.files].filter((f) => !f.type || f.type.startsWith("image/")));
  });
  const again = () => lastQuery && search(lastQuery);
  $("k").addEventListener("change", again);
  $("open-set").addEventListener("change", again);
  $("threshold").addEventListener("change", () => $("open-set").checked && again());
  $("collection").addEventListener("change", () => {
    checkMap();
    again();
  });
}

// --- verify ---------------------------------------------------------------------------------------------------

async function verify() {
  const a = $("verify-a").files[0];
  const b = $("verify-b").files[0];
  const source = $("verify-source").value;
  if (!a || !b) return showMessage("choose two images to verify");
  if (!source) return showMessage("no collection or model to decide with");
  const [kind, ...rest] = source.split(":");
  const field = kind === "model" ? "model" : "name";
  const form = new FormData();
  form.append("a", a, a.name);
  form.append("b", b, b.name);
  const verdict = $("verdict");
  verdict.replaceChildren(el("p", "note", "Verifying…"));
  try {
    const url = `/verify?${field}=${encodeURIComponent(rest.join(":"))}${thresholdParam("verify-threshold")}`;
    const answer = await api(url, { method: "POST", body: form });
    showMessage("");
    renderVerdict(answer);
  } catch (e) {
    verdict.replaceChildren();
    fail(e);
  }
}

function renderVerdict(v) {
  const rows = [
    ["Distance", fixed(v.distance)],
    ["Threshold", fixed(v.threshold)],
    ["Operating point", v.operating_point ?? "—"],
    ["Match probability", percent(v.probability)],
  ];
  if (typeof v.far === "number") rows.push(["FAR / FRR", `${fixed(v.far, 3)} / ${fixed(v.frr, 3)}`]);
  if (v.source) rows.push(["Decided with", v.source]);
  if (v.reason) rows.push(["Reason", v.reason]);
  const list = el("dl");
  for (const [term, value] of rows) list.append(el("dt", null, term), el("dd", null, String(value)));
  $("verdict").replaceChildren(
    el("p", v.match ? "decision match" : "decision no-match", v.match ? "Match" : "No match"),
    el("p", "pair", `${v.a} · ${v.b}`),
    list,
  );
}

// --- start ----------------------------------------------------------------------------------------------------

function setUpToken() {
  $("token").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token").hidden = true;
    loadCollections().catch(fail);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpToken();
  setUpSearch();
  $("verify-button").addEventListener("click", verify);
  loadCollections().catch(fail);
});
