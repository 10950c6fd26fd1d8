"use strict";
// batchdrop's status page: reads api/status and api/recent and renders them with text nodes only.
// Only text nodes, never markup from strings: every name, reason and log line comes from outside.
(function () {
  const address = new URLSearchParams(window.location.search);
  const REFRESH_MS = Math.max(500, Number(address.get("refresh")) || 2000);  // ?refresh=MS, 0.5 s at least
  const key = address.get("code");
  const headers = key ? { "x-functions-key": key } : {};
  const state = { cursors: [null], prefix: "", state: "", timer: null, generation: 0 };

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "className") node.className = value;
      else if (name === "title" || name === "hidden") node[name] = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(tbodyParent, rows, empty, columns) {
    const body = document.querySelector(`#${tbodyParent} tbody`);
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, className: "muted" }, empty))]));
  }

  function bar(counts) {
    const done = (counts.succeeded || 0) + (counts.failed || 0);
    const total = done + (counts.queued || 0) + (counts.running || 0);
    const outer = el("div", { className: "bar", title: `${done} of ${total} finished` });
    if (total > 0) {
      for (const [part, cls] of [["succeeded", "ok"], ["failed", "bad"], ["running", "run"]]) {
        const width = (100 * (counts[part] || 0)) / total;
        if (width > 0) {
          const segment = el("span", { className: cls });
          segment.style.width = `${width}%`;
          outer.append(segment);
        }
      }
    }
    return el("td", {}, outer, el("span", { className: "muted small" }, total ? ` ${done}/${total}` : " idle"));
  }

  function countCells(counts, names) {
    return names.map((name) => el("td", { className: `num ${counts[name] ? name : ""}` }, counts[name] || 0));
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    return value < 90 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
  }

  // Results are read through the app (api/results/…), which checks the blob and answers with a short read-only
  // link; the key is added at click time, so it never stands in the page.
  function resultLink(link) {
    const anchor = el("a", { href: "#", className: "result", title: link.path }, link.name);
    anchor.addEventListener("click", (event) => {
      event.preventDefault();
      const path = link.path.split("/").map(encodeURIComponent).join("/");
      const query = key ? `?code=${encodeURIComponent(key)}` : "";
      window.open(`results/${path}${query}`, "_blank", "noopener,noreferrer");
    });
    return anchor;
  }

  async function getJson(path) {
    const response = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`${path.split("?")[0]}: HTTP ${response.status}`);
    return response.json();
  }

  function renderStatus(status) {
    const batchKeys = ["queued", "running", "succeeded", "failed", "collected", "rejected", "skipped"];
    fill("pipelines", (status.pipelines || []).map((p) =>
      el("tr", { dataset: { pipeline: p.name } }, el("td", {}, p.name), bar(p.counts), ...countCells(p.counts, batchKeys))),
      "no pipelines", 9);
    fill("jobs", (status.jobs || []).map((job) =>
      el("tr", { dataset: { job: job.job_id } }, el("td", { className: "mono" }, job.job_id), el("td", {}, job.pipeline),
        el("td", {}, el("span", { className: `badge ${job.window || job.state}` }, job.window || job.state)),
        bar(job.counts), ...countCells(job.counts, ["queued", "running", "succeeded", "failed", "collected"]))),
      "no live jobs", 9);
    const deleted = status.deleted_jobs || { count: 0, counts: {} };
    document.getElementById("deleted-jobs").textContent = deleted.count
      ? `${deleted.count} deleted job(s): ${deleted.counts.collected || 0} inputs collected, ${deleted.counts.failed || 0} failed`
      : "";
    const health = [];
    for (const [queue, count] of Object.entries(status.poison || {})) health.push([`poison messages (${queue})`, count]);
    // Event Grid's dead letters: {blobs, capped, by_subscription} where the app reports them; absent elsewhere.
    const dead = status.event_dead_letters;
    if (dead && typeof dead === "object" && dead.blobs !== undefined) {
      health.push(["event dead letters", `${dead.blobs}${dead.capped ? "+" : ""}`]);
      for (const [subscription, n] of Object.entries(dead.by_subscription || {})) {
        health.push([`dead letters of ${subscription || "?"}`, n]);
      }
    } else if (typeof dead === "number") {
      health.push(["event dead letters", dead]);
    }
    const totals = status.totals || {};
    health.push(["rejected inputs", totals.rejected || 0], ["skipped inputs", totals.skipped || 0]);
    for (const w of status.waiting || []) health.push([`waiting for schedule (${w.pipeline})`, `next run ${when(w.next_run)}: ${w.inputs} input(s)`]);
    document.getElementById("health").replaceChildren(...health.flatMap(([term, value]) =>
      [el("dt", {}, term), el("dd", { className: parseInt(value, 10) ? "bad" : "" }, value)]));
    fill("pools", (status.pools || []).map((pool) => {
      const nodes = Object.entries(pool.nodes || {}).map(([name, n]) => `${name} ${n}`).join(", ");
      const drift = (pool.drift || []).map((d) => `${d.field}: ${d.actual} → ${d.wanted} (${d.action})`).join("; ");
      const startFailed = (pool.nodes || {}).starttaskfailed || 0;
      return el("tr", {}, el("td", {}, pool.pool_id, pool.exists ? "" : " (missing)"), el("td", {}, nodes || "no nodes"),
        el("td", { className: startFailed ? "bad num" : "num" }, startFailed), el("td", {}, drift || "none"));
    }), "no pools in use", 4);
    fill("rejected", (status.rejected || []).slice(0, 20).map((r) =>
      el("tr", {}, el("td", { className: "name" }, r.input), el("td", {}, r.reason), el("td", { className: "muted" }, when(r.at)))),
      "nothing rejected", 3);
  }

  function renderRecent(listing) {
    const rows = [];
    for (const input of listing.inputs) {
      const outputs = el("td", { className: "outputs" });
      for (const link of [...input.outputs, input.stdout, input.stderr]) {
        if (link) outputs.append(resultLink(link), " ");
      }
      rows.push(el("tr", { dataset: { name: input.name, state: input.state }, className: "input" },
        el("td", { className: "name", title: input.name }, input.name),
        el("td", {}, el("span", { className: `badge ${input.state}` }, input.state)),
        el("td", { className: "num" }, input.exit_code === null ? "" : input.exit_code),
        el("td", { className: "num" }, seconds(input.duration_seconds)),
        outputs,
        el("td", { className: "muted" }, when(input.at))));
      const failure = input.failure;
      if (failure || input.reason || input.stderr_tail) {
        const detail = el("td", { colspan: 6, className: "detail" });
        if (failure) detail.append(el("div", { className: "reason" }, `${failure.code || failure.category || "failed"}: ${failure.message || ""}`));
        if (input.reason) detail.append(el("div", { className: "reason" }, input.reason));
        if (input.stderr_tail) detail.append(el("pre", { className: "stderr" }, input.stderr_tail));
        rows.push(el("tr", { dataset: { detailOf: input.name }, className: "detail-row" }, detail));
      }
    }
    fill("recent", rows, state.prefix || state.state ? "no recent input matches the filter" : "no inputs yet", 6);
    state.next = listing.next;
    document.getElementById("older").disabled = !listing.next;
    document.getElementById("newest").disabled = state.cursors.length <= 1;
  }

  async function refresh() {
    const generation = ++state.generation;
    const params = new URLSearchParams({ limit: "20" });
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) params.set("after", cursor);
    if (state.prefix) params.set("prefix", state.prefix);
    if (state.state) params.set("state", state.state);
    try {
      const [status, listing] = await Promise.all([getJson("status"), getJson(`recent?${params}`)]);
      if (generation !== state.generation) return;  // a newer refresh (a filter change) has started
      renderStatus(status);
      renderRecent(listing);
      document.getElementById("error").hidden = true;
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    } catch (error) {
      const box = document.getElementById("error");
      box.textContent = `could not refresh: ${error.message}`;
      box.hidden = false;
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (document.getElementById("live").checked) {
      state.timer = setTimeout(async () => { await refresh(); schedule(); }, REFRESH_MS);
    }
  }

  function restart() {
    state.cursors = [null];
    refresh().then(schedule);
  }

  let typing = null;
  document.getElementById("prefix").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.prefix = event.target.value; restart(); }, 250);
  });
  document.getElementById("state").addEventListener("change", (event) => { state.state = event.target.value; restart(); });
  document.getElementById("filter").addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("older").addEventListener("click", () => {
    if (state.next) { state.cursors.push(state.next); refresh(); }
  });
  document.getElementById("newest").addEventListener("click", restart);
  document.getElementById("live").addEventListener("change", schedule);
  restart();
})();
