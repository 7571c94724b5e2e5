/* tbftd energy dashboard: reads this daemon's JSON API and draws its jobs as a table and two
 * hand-written SVG charts. No libraries, no build step, nothing fetched from anywhere else.
 * Whatever comes from the API (contexts are user input) reaches the page only as text
 * (textContent, attribute values), never as markup. */
(() => {
  "use strict";

  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 30000; // a tab nobody looks at should not keep the Pi busy
  const FULL_REFRESH_MS = 15000; // jobs and energy are re-read at least this often
  const JOBS_LIMIT = 50;
  const CHART_JOBS = 40;
  const MAX_DRAWN_POINTS = 400; // above this the trace is a line without dots
  const TOKEN_KEY = "tbftd.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ESTIMATE_PREFIX = "estimate:";
  // Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
  const BLOCK_COLOURS = {
    block1: "#0072b2", block2: "#009e73", block3: "#e69f00", fc: "#cc79a7", full: "#d55e00", bn: "#56b4e9",
  };
  const BLOCK_ORDER = Object.keys(BLOCK_COLOURS);
  const OTHER_COLOUR = "#8a8f98";
  const BLOCK_ROLE = {
    block1: "front", block2: "second", block3: "middle", fc: "classifier", full: "whole model", bn: "BatchNorm only",
  };
  const PENDING = new Set(["queued", "running"]);

  const state = {
    token: null,
    status: null,
    jobs: [], // newest first, as /v1/jobs gives them
    energy: new Map(), // job id -> row of /v1/energy
    energySince: null, // created_at of the newest energy row seen: the next read asks only for newer
    signature: null, // what in /v1/status makes the job list worth re-reading
    lastFullMs: 0,
    selectedId: null,
    userSelected: false,
    traces: new Map(), // job id -> /v1/jobs/{id}/power, kept once the job has ended
    traceLoading: null,
    clockOffsetMs: 0, // daemon clock minus this browser's, for durations of a running job
    stopped: false,
    timer: null,
    inFlight: false, // a poll is waiting for answers; it schedules the next one itself
    loaded: false, // false until the first answer: "no jobs" must not show before it
    clipCount: 0,
    lastTableKey: null,
    lastChartKey: null,
    lastTraceKey: null,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- small helpers ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** An HTML element with text and attributes; children are appended as given. */
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  /** An SVG element with attributes (and optional text). */
  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    if (text !== null) node.textContent = String(text);
    return node;
  }

  function svgTitle(text) {
    return svg("title", {}, text);
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const isEstimate = (source) => typeof source === "string" && source.startsWith(ESTIMATE_PREFIX);
  const blockColour = (block) => BLOCK_COLOURS[block] || OTHER_COLOUR;
  const serverNowSeconds = () => (Date.now() + state.clockOffsetMs) / 1000;

  function fmt(value, digits) {
    return value.toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function joulesText(joules) {
    if (!isNum(joules)) return "—";
    const digits = Math.abs(joules) >= 100 ? 0 : 1;
    // No "-0.0 J": a job that drew its idle power to the milliwatt is at zero, not below it.
    const shown = Math.abs(joules) < 0.5 * 10 ** -digits ? 0 : joules;
    return fmt(shown, digits) + " J";
  }

  function wattsText(watts) {
    return isNum(watts) ? fmt(watts, 2) + " W" : "—";
  }

  function percentText(fraction) {
    return isNum(fraction) ? fmt(fraction * 100, 1) + " %" : "—";
  }

  function durationText(seconds) {
    if (!isNum(seconds) || seconds < 0) return "—";
    if (seconds < 60) return fmt(seconds, 1) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  }

  function queuedText(count) {
    if (!count) return "no jobs queued";
    return count === 1 ? "1 job queued" : `${count} jobs queued`;
  }

  function bytesText(bytes) {
    if (!isNum(bytes)) return "—";
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return fmt(value, unit === 0 ? 0 : 1) + " " + units[unit];
  }

  function timeText(epochSeconds) {
    if (!isNum(epochSeconds)) return "—";
    const d = new Date(epochSeconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** "meter" or "estimate", and the source label without its prefix. */
  function sourceParts(source) {
    if (typeof source !== "string" || !source) return { kind: "unknown", label: "unknown" };
    if (isEstimate(source)) return { kind: "estimate", label: source.slice(ESTIMATE_PREFIX.length) };
    return { kind: "meter", label: source };
  }

  function sourceBadge(source) {
    const parts = sourceParts(source);
    return el("span", { className: `badge src-${parts.kind}`, text: parts.kind });
  }

  /** Round tick values from 0 to at least ``max``: steps of 1, 2 or 5 times a power of ten. */
  function ticks(max, count = 5) {
    const top = max > 0 ? max : 1;
    const raw = top / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const values = [];
    for (let v = 0; v < top + step * 0.999; v += step) values.push(Number(v.toPrecision(12)));
    return { values, max: values[values.length - 1], step };
  }

  function tickLabel(value, step) {
    const digits = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return fmt(value, digits);
  }

  // -- the API ---------------------------------------------------------------------------------

  /** The token from ?token=... (kept for this tab, removed from the address bar) or from before. */
  function takeToken() {
    let stored = null;
    try {
      const url = new URL(window.location.href);
      const given = url.searchParams.get("token");
      if (given !== null) {
        if (given) sessionStorage.setItem(TOKEN_KEY, given);
        url.searchParams.delete("token");
        history.replaceState(null, "", url.pathname + url.search + url.hash);
      }
      stored = sessionStorage.getItem(TOKEN_KEY);
    } catch (err) {
      // Storage can be switched off; the page then works for a daemon without a token.
      stored = null;
    }
    return stored;
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // nothing stored, nothing to forget
    }
    state.token = null;
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    } catch (err) {
      throw new ApiError(0, "cannot reach the daemon");
    }
    noteServerClock(response.headers.get("Date"));
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    if (body === null) throw new ApiError(response.status, `${path} did not answer JSON`);
    return body;
  }

  function noteServerClock(dateHeader) {
    const server = Date.parse(dateHeader || "");
    if (Number.isNaN(server)) return;
    // The header has whole seconds; only a clock that is clearly off (a Pi without network
    // time) is worth correcting, else running durations would jitter by a second.
    const offset = server + 500 - Date.now();
    state.clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
  }

  // -- polling ---------------------------------------------------------------------------------

  function schedule(delayMs) {
    if (state.stopped) return;
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, delayMs ?? (document.hidden ? HIDDEN_POLL_MS : POLL_MS));
  }

  async function poll() {
    state.timer = null;
    state.inFlight = true;
    try {
      const status = await api("/v1/status");
      state.status = status;
      const running = status.running_job ? status.running_job.id : null;
      const signature = `${status.model_version}/${JSON.stringify((status.models || {}).contexts)}/${running}/${status.queued_jobs}`;
      const nowMs = Date.now();
      // Job rows carry their sample ids: re-read them when something changed, not every poll.
      if (signature !== state.signature || nowMs - state.lastFullMs >= FULL_REFRESH_MS) {
        await refreshJobsAndEnergy();
        state.signature = signature;
        state.lastFullMs = nowMs;
        state.loaded = true;
      }
      showAlert(null);
      showConnection("live", `live · updated ${timeText(serverNowSeconds()).slice(11)}`);
      render();
    } catch (err) {
      handleError(err);
    }
    state.inFlight = false;
    schedule();
  }

  async function refreshJobsAndEnergy() {
    const since = state.energySince === null ? "" : `?since=${encodeURIComponent(String(state.energySince))}`;
    const [jobs, energy] = await Promise.all([api(`/v1/jobs?limit=${JOBS_LIMIT}`), api(`/v1/energy${since}`)]);
    state.jobs = Array.isArray(jobs.jobs) ? jobs.jobs : [];
    for (const row of Array.isArray(energy.jobs) ? energy.jobs : []) {
      state.energy.set(row.job_id, row);
      if (isNum(row.created_at) && (state.energySince === null || row.created_at > state.energySince)) {
        state.energySince = row.created_at;
      }
    }
  }

  function handleError(err) {
    if (!(err instanceof ApiError)) {
      // A bug of this page, not the daemon's: say so where a person will see it.
      showConnection("down", "page error");
      showAlert(`This page failed to show the daemon's data: ${err.message}`);
      return;
    }
    const status = err.status;
    if (status === 401) {
      const hadToken = Boolean(state.token);
      forgetToken();
      state.stopped = true; // every further request would be refused too
      showConnection("down", "not authorised");
      showAlert(
        hadToken
          ? "The daemon refused the API token this page was given. Open the page again as /?token=<the daemon's api_token>."
          : "This daemon requires its API token. Open the page once as /?token=<the daemon's api_token>: the page keeps it for this browser tab only and removes it from the address bar.",
      );
      return;
    }
    const what = status === 0 ? "Cannot reach the daemon." : `The daemon answered ${status}: ${err.message}.`;
    showConnection("down", "offline · retrying");
    showAlert(`${what} Retrying every ${POLL_MS / 1000} s; the figures below are from the last successful update.`);
  }

  function showConnection(kind, text) {
    const node = $("connection");
    node.className = `connection ${kind}`;
    node.textContent = text;
  }

  function showAlert(text) {
    const node = $("alert");
    node.hidden = text === null;
    node.textContent = text ?? "";
  }

  // -- rendering -------------------------------------------------------------------------------

  function render() {
    chooseDefaultSelection();
    renderStatus();
    renderTable();
    renderEnergyChart();
    renderTrace();
  }

  /** The newest measured job, until the person picks one. */
  function chooseDefaultSelection() {
    if (state.userSelected && state.selectedId !== null) return;
    const newest = state.jobs.find((job) => state.energy.has(job.id));
    state.selectedId = newest ? newest.id : null;
  }

  function select(jobId) {
    state.selectedId = jobId;
    state.userSelected = true;
    state.lastTableKey = null;
    state.lastChartKey = null;
    render();
  }

  function progressOf(job) {
    const status = state.status;
    if (status && status.running_job && status.running_job.id === job.id && status.running_job.progress) {
      return status.running_job.progress;
    }
    return job.progress && !job.progress.result ? job.progress : null;
  }

  function progressFraction(progress) {
    if (!progress || !isNum(progress.epochs) || progress.epochs <= 0) return 0;
    if (progress.phase === "prepare") return 0;
    const within = progress.phase === "validate" || !progress.batches ? 1 : progress.batch / progress.batches;
    return Math.min(1, Math.max(0, (progress.epoch - 1 + within) / progress.epochs));
  }

  function progressText(progress) {
    if (!progress) return "starting";
    if (progress.phase === "prepare") return "measuring the model before training";
    const parts = [`epoch ${progress.epoch}/${progress.epochs}`];
    if (progress.phase === "validate") parts.push("validating");
    if (isNum(progress.loss)) parts.push(`loss ${fmt(progress.loss, 3)}`);
    if (isNum(progress.samples_per_second)) parts.push(`${fmt(progress.samples_per_second, 0)} samples/s`);
    return parts.join(" · ");
  }

  function renderStatus() {
    const status = state.status;
    if (!status) return;
    $("model-version").textContent = `version ${status.model_version}`;
    // Each context with a model of its own, e.g. "cam-1 v4, cam-2 v6"; the others serve the default.
    const own = Object.entries((status.models && status.models.contexts) || {});
    const contexts = own.length ? ` · ${own.map(([name, version]) => `${name} v${version}`).join(", ")}` : "";
    $("model-version").title = own.length ? `default model v${status.models.default}; contexts with their own:${contexts.slice(2)}` : "";
    $("model-detail").textContent = `${queuedText(status.queued_jobs)}${contexts} · up ${durationText(status.uptime_seconds)}`;

    const buffer = status.buffer || {};
    $("buffer-fill").textContent = percentText(buffer.fill);
    $("buffer-meter").value = isNum(buffer.fill) ? Math.min(1, buffer.fill) : 0;
    $("buffer-detail").textContent =
      `${fmt(buffer.samples ?? 0, 0)} of ${fmt(buffer.max_samples ?? 0, 0)} samples · ` +
      `${bytesText(buffer.bytes)} of ${bytesText(buffer.max_bytes)}`;

    const meter = status.meter || {};
    const kind = meter.estimate ? "estimate" : (meter.model || meter.kind || "meter");
    $("meter-kind").textContent = meter.estimate ? "CPU-load estimate" : String(kind).toUpperCase();
    const sourceNode = $("meter-source");
    sourceNode.replaceChildren(sourceBadge(meter.source), ` ${meter.source ?? "unknown"}`);
    const health = $("meter-health");
    const healthText = String(meter.health ?? "unknown");
    health.textContent = `health: ${healthText}`;
    health.className = `health ${healthText === "ok" ? "ok" : healthText.startsWith("unknown") ? "unknown" : "warn"}`;

    const running = status.running_job;
    const bar = $("running-progress");
    if (running) {
      const job = state.jobs.find((j) => j.id === running.id);
      const title = job ? `job #${job.id} · ${job.block ?? "?"} · ${job.context}` : `job #${running.id}`;
      $("running-title").textContent = title;
      bar.hidden = false;
      bar.value = progressFraction(running.progress);
      $("running-detail").textContent = progressText(running.progress);
    } else {
      $("running-title").textContent = "idle";
      bar.hidden = true;
      $("running-detail").textContent = status.queued_jobs ? queuedText(status.queued_jobs) : "nothing to do";
    }
  }

  function renderTable() {
    const body = $("jobs-body");
    const key = JSON.stringify([state.loaded, state.jobs, [...state.energy.keys()].length, state.selectedId,
      state.status && state.status.running_job, state.clockOffsetMs ? 1 : 0,
      state.jobs.some((j) => j.state === "running") ? Math.floor(serverNowSeconds()) : 0]);
    if (key === state.lastTableKey) return;
    state.lastTableKey = key;
    $("jobs-count").textContent = state.jobs.length ? `(${state.jobs.length} most recent)` : "";
    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.jobId : undefined;

    if (!state.jobs.length) {
      body.replaceChildren(el("tr", { className: "empty-row" }, [
        el("td", { colspan: 12, text: !state.loaded ? "Loading…" : "No jobs yet. A job starts when a device posts enough samples and a drift hint (POST /v1/samples, POST /v1/drift)." }),
      ]));
      return;
    }
    body.replaceChildren(...state.jobs.map(jobRow));
    if (focusedId !== undefined) {
      const row = body.querySelector(`tr[data-job-id="${CSS.escape(focusedId)}"]`);
      if (row) row.focus();
    }
  }

  function jobRow(job) {
    const energy = state.energy.get(job.id);
    const row = el("tr", {
      "data-job-id": job.id,
      tabindex: 0,
      "aria-selected": job.id === state.selectedId ? "true" : "false",
      className: job.id === state.selectedId ? "selected" : "",
    });
    row.addEventListener("click", () => select(job.id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(job.id);
      }
    });

    const started = isNum(job.started_at) ? job.started_at : null;
    const when = started ?? job.created_at;
    let seconds = null;
    if (started !== null && isNum(job.finished_at)) seconds = job.finished_at - started;
    else if (started !== null && job.state === "running") seconds = serverNowSeconds() - started;

    const swatch = el("span", { className: "swatch", "aria-hidden": "true" });
    swatch.style.background = blockColour(job.block);

    row.append(
      el("td", { text: `#${job.id}` }),
      el("td", { text: timeText(when), title: started === null ? "queued at" : "started at" }),
      el("td", { className: "context", text: job.context, title: job.context }),
      el("td", { text: job.drift_type ?? "—", title: job.drift_type ? null : "started for a block, not a drift type" }),
      el("td", { title: BLOCK_ROLE[job.block] ?? null }, [swatch, job.block ?? "—"]),
      stateCell(job),
      el("td", { className: "num", text: durationText(seconds) }),
      accuracyCell(job),
      ...energyCells(job, energy),
    );
    return row;
  }

  function stateCell(job) {
    const cell = el("td", { className: "state" }, [el("span", { className: `badge state-${job.state}`, text: job.state, title: job.error ?? null })]);
    if (job.state === "running") {
      const progress = progressOf(job);
      cell.append(el("span", { className: "small", text: progressText(progress) }));
      const bar = el("progress", { max: 1 });
      bar.value = progressFraction(progress);
      cell.append(bar);
    } else if (job.state === "succeeded" && job.decision) {
      const promoted = job.decision.promoted;
      const version = job.model_version_out;
      // "nothing to adapt" (no drift found) is an outcome, not a failure to improve: say so.
      const nothing = job.decision.outcome === "nothing to adapt";
      cell.append(el("span", {
        className: nothing ? "small outcome-nothing" : "small",
        text: nothing ? "nothing to adapt" : (promoted ? `→ ${job.context} model v${version}` : "not promoted"),
        title: job.decision.reason ?? null,
      }));
    } else if (job.error) {
      cell.append(el("span", { className: "small", text: String(job.error).slice(0, 60), title: job.error }));
    }
    return cell;
  }

  function accuracyCell(job) {
    const before = job.accuracy_before;
    const after = job.accuracy_after;
    if (!isNum(before) && !isNum(after)) return el("td", { className: "num", text: "—" });
    const cell = el("td", { className: "num", title: "on the job's held-out validation samples" });
    cell.append(percentText(before), " → ");
    if (isNum(after)) {
      const delta = (after - (isNum(before) ? before : after)) * 100;
      const direction = delta > 0.05 ? "up" : delta < -0.05 ? "down" : "";
      cell.append(el("span", { className: direction, text: percentText(after) }));
      cell.append(el("span", { className: "small", text: `${delta >= 0 ? "+" : ""}${fmt(delta, 1)} points` }));
    } else {
      cell.append("—");
    }
    return cell;
  }

  function energyCells(job, energy) {
    if (!energy) {
      const why = PENDING.has(job.state) ? "measured when the job ends" : "no energy recorded";
      return [
        el("td", { className: "num", text: "—", title: why }),
        el("td", { className: "num", text: "—", title: why }),
        el("td", { className: "num", text: "—", title: why }),
        el("td", { text: "—", title: why }),
      ];
    }
    const notes = Array.isArray(energy.notes) ? energy.notes.join("\n") : "";
    const gross = el("td", { className: "num", title: energy.low_confidence ? `low confidence: ${notes}` : null },
      [(energy.low_confidence ? "≈ " : "") + joulesText(energy.joules)]);
    const net = el("td", {
      className: "num",
      text: joulesText(energy.net_joules),
      title: isNum(energy.baseline_watts)
        ? `gross minus the idle baseline of ${wattsText(energy.baseline_watts)} over ${durationText(energy.seconds)}`
        : "no idle baseline was measured",
    });
    const mean = el("td", { className: "num", text: wattsText(energy.mean_watts), title: `peak ${wattsText(energy.peak_watts)}` });
    const parts = sourceParts(energy.source);
    const source = el("td", { className: "source", title: notes || null },
      [sourceBadge(energy.source), el("span", { className: "small", text: parts.label, title: energy.source })]);
    return [gross, net, mean, source];
  }

  // -- the energy chart ------------------------------------------------------------------------

  function renderEnergyChart() {
    const rows = [...state.energy.values()].sort((a, b) => a.job_id - b.job_id).slice(-CHART_JOBS);
    const key = JSON.stringify([state.loaded, rows.map((r) => [r.job_id, r.joules, r.net_joules, r.block]), state.selectedId]);
    if (key === state.lastChartKey) return;
    state.lastChartKey = key;
    const holder = $("energy-chart");
    renderLegend(rows);
    if (!rows.length) {
      holder.replaceChildren(el("p", { className: "empty", text: !state.loaded ? "Loading…" : "No measured jobs yet: each job's energy appears here when it ends." }));
      return;
    }

    const width = 640;
    const height = 280;
    const m = { left: 58, right: 12, top: 14, bottom: 44 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const scale = ticks(Math.max(...rows.map((r) => (isNum(r.joules) ? r.joules : 0))));
    const y = (joules) => m.top + plotH - (Math.max(0, joules) / scale.max) * plotH;
    const slot = plotW / rows.length;
    const barW = Math.max(3, Math.min(46, slot * 0.7));

    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Energy per job, in joules", id: "energy-svg",
    });
    drawYAxis(chart, scale, y, m, width, "energy per job (J)", plotH);
    chart.append(svg("line", { class: "axis", x1: m.left, x2: width - m.right, y1: y(0), y2: y(0) }));

    const labelEvery = Math.ceil(rows.length / Math.max(1, Math.floor(plotW / 34)));
    rows.forEach((row, i) => {
      const cx = m.left + slot * (i + 0.5);
      const x = cx - barW / 2;
      const joules = isNum(row.joules) ? row.joules : 0;
      // The idle share is baseline × seconds, what the Pi would have drawn doing nothing.
      const idle = isNum(row.net_joules) ? Math.min(joules, Math.max(0, joules - row.net_joules)) : 0;
      const colour = blockColour(row.block);
      const estimate = isEstimate(row.source);
      const classes = ["bar", estimate ? "estimate" : "", row.job_id === state.selectedId ? "selected" : ""];
      const group = svg("g", {
        class: classes.filter(Boolean).join(" "), "data-job-id": row.job_id, tabindex: 0, role: "button",
        "aria-label": `job ${row.job_id}: ${joulesText(joules)}`,
      });
      const parts = sourceParts(row.source);
      group.append(svgTitle(
        `job #${row.job_id} · ${row.block ?? "?"} · ${row.context}\n` +
        `${joulesText(joules)} gross, ${joulesText(row.net_joules)} net of idle over ${durationText(row.seconds)}\n` +
        `mean ${wattsText(row.mean_watts)} · ${parts.kind}: ${parts.label}`,
      ));
      if (idle > 0) {
        group.append(svg("rect", { class: "idle", x, width: barW, y: y(idle), height: y(0) - y(idle), fill: colour, "fill-opacity": 0.32 }));
      }
      group.append(svg("rect", { class: "net", x, width: barW, y: y(joules), height: Math.max(0, y(idle) - y(joules)), fill: colour }));
      group.append(svg("rect", { class: "outline", x, width: barW, y: y(joules), height: Math.max(1, y(0) - y(joules)) }));
      group.addEventListener("click", () => select(row.job_id));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          select(row.job_id);
        }
      });
      chart.append(group);
      if (i % labelEvery === 0 || i === rows.length - 1) {
        chart.append(svg("text", { x: cx, y: y(0) + 14, "text-anchor": "middle" }, `#${row.job_id}`));
      }
    });
    chart.append(svg("text", { class: "axis-title", x: m.left + plotW / 2, y: height - 6, "text-anchor": "middle" }, "job (oldest left, newest right)"));
    holder.replaceChildren(chart);
  }

  function drawYAxis(chart, scale, y, m, width, title, plotH) {
    for (const value of scale.values) {
      chart.append(svg("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(value), y2: y(value) }));
      chart.append(svg("text", { x: m.left - 6, y: y(value) + 4, "text-anchor": "end" }, tickLabel(value, scale.step)));
    }
    const midY = m.top + plotH / 2;
    chart.append(svg("text", {
      class: "axis-title", x: 14, y: midY, "text-anchor": "middle", transform: `rotate(-90 14 ${midY})`,
    }, title));
  }

  function legendItem(draw, text) {
    const icon = svg("svg", { viewBox: "0 0 14 14", "aria-hidden": "true" });
    draw(icon);
    return el("li", {}, [icon, el("span", { text })]);
  }

  function renderLegend(rows) {
    const legend = $("energy-legend");
    const present = new Set(rows.map((r) => r.block));
    const blocks = [...BLOCK_ORDER, ...[...present].filter((b) => !(b in BLOCK_COLOURS))].filter((b) => present.has(b));
    const items = blocks.map((block) => legendItem(
      (icon) => icon.append(svg("rect", { x: 1, y: 1, width: 12, height: 12, rx: 2, fill: blockColour(block) })),
      `${block ?? "unknown"}${BLOCK_ROLE[block] ? ` (${BLOCK_ROLE[block]})` : ""}`,
    ));
    if (rows.length) {
      items.push(legendItem((icon) => {
        icon.append(svg("rect", { x: 1, y: 1, width: 12, height: 6, fill: "#5d6878" }));
        icon.append(svg("rect", { x: 1, y: 7, width: 12, height: 6, fill: "#5d6878", "fill-opacity": 0.32 }));
      }, "solid: above idle · pale: idle baseline"));
    }
    if (rows.some((r) => isEstimate(r.source))) {
      items.push(legendItem((icon) => icon.append(svg("rect", {
        x: 1.5, y: 1.5, width: 11, height: 11, fill: "none", stroke: "#8a5a00", "stroke-dasharray": "3 2",
      })), "dashed outline: estimated, not metered"));
    }
    legend.replaceChildren(...items);
  }

  // -- the power trace -------------------------------------------------------------------------

  function renderTrace() {
    const id = state.selectedId;
    const job = state.jobs.find((j) => j.id === id) || null;
    const energy = id === null ? null : state.energy.get(id) || null;
    const trace = id === null ? null : state.traces.get(id) || null;
    const key = JSON.stringify([state.loaded, id, job && job.state, Boolean(energy), Boolean(trace), state.traceLoading]);
    if (key === state.lastTraceKey) return;
    state.lastTraceKey = key;
    const holder = $("trace-chart");
    const summary = $("trace-summary");
    $("trace-title").textContent = id === null ? "Power trace" : `Power trace · job #${id}`;

    if (id === null) {
      holder.replaceChildren(el("p", { className: "empty", text: !state.loaded ? "Loading…" : "Click a job in the table or a bar in the chart to see its power trace." }));
      summary.textContent = "";
      return;
    }
    if (!energy) {
      const pending = job && PENDING.has(job.state);
      holder.replaceChildren(el("p", {
        className: "empty",
        text: pending ? `Job #${id} is ${job.state}: its power trace is saved when it ends.` : `Job #${id} has no energy record (it ended before it was measured).`,
      }));
      summary.textContent = "";
      return;
    }
    if (!trace) {
      holder.replaceChildren(el("p", { className: "empty", text: `Loading the power trace of job #${id}…` }));
      summary.textContent = "";
      loadTrace(id);
      return;
    }
    drawTrace(holder, trace, energy);
    summary.replaceChildren(...traceSummary(energy, trace));
  }

  async function loadTrace(id) {
    if (state.traceLoading === id) return;
    state.traceLoading = id;
    try {
      const trace = await api(`/v1/jobs/${encodeURIComponent(id)}/power`);
      state.traces.set(id, trace);
    } catch (err) {
      state.traceLoading = null;
      if (err instanceof ApiError && err.status === 401) {
        handleError(err);
        return;
      }
      if (state.selectedId === id) {
        $("trace-chart").replaceChildren(el("p", { className: "empty", text: `Could not load the power trace of job #${id}: ${err.message}` }));
      }
      return;
    }
    state.traceLoading = null;
    state.lastTraceKey = null;
    renderTrace();
  }

  function traceSummary(energy, trace) {
    const parts = sourceParts(energy.source);
    const baseline = isNum(energy.baseline_watts)
      ? `idle baseline ${wattsText(energy.baseline_watts)}, so ${joulesText(energy.net_joules)} above idle`
      : "no idle baseline";
    return [
      `${joulesText(energy.joules)} over ${durationText(energy.seconds)} (mean ${wattsText(energy.mean_watts)}, peak ${wattsText(energy.peak_watts)}); ${baseline}. `,
      sourceBadge(energy.source),
      ` ${parts.label}, ${trace.points.length} readings` + (energy.low_confidence ? " · low confidence: too few readings for the job's length" : ""),
    ];
  }

  function drawTrace(holder, trace, energy) {
    const points = (Array.isArray(trace.points) ? trace.points : []).filter((p) => isNum(p.t_seconds) && isNum(p.watts));
    if (!points.length) {
      holder.replaceChildren(el("p", { className: "empty", text: "No power readings were recorded for this job." }));
      return;
    }
    const baseline = isNum(trace.baseline_watts) ? trace.baseline_watts : null;
    const width = 640;
    const height = 280;
    const m = { left: 58, right: 16, top: 14, bottom: 44 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const lastT = Math.max(energy && isNum(energy.seconds) ? energy.seconds : 0, points[points.length - 1].t_seconds);
    // The time axis ends with the job (its ticks stay round); power starts at zero so the areas
    // under the line compare as energies.
    const xMax = lastT > 0 ? lastT : 1;
    const xScale = ticks(xMax, 6);
    xScale.values = xScale.values.filter((t) => t <= xMax * 1.0001);
    const yScale = ticks(Math.max(...points.map((p) => p.watts), baseline ?? 0) * 1.08);
    const x = (t) => m.left + (t / xMax) * plotW;
    const y = (w) => m.top + plotH - (Math.max(0, w) / yScale.max) * plotH;
    const colour = blockColour(energy ? energy.block : null);

    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Power over time, in watts", id: "trace-svg" });
    drawYAxis(chart, yScale, y, m, width, "power (W)", plotH);
    for (const t of xScale.values) {
      chart.append(svg("text", { x: x(t), y: y(0) + 16, "text-anchor": "middle" }, tickLabel(t, xScale.step)));
    }
    chart.append(svg("text", { class: "axis-title", x: m.left + plotW / 2, y: height - 6, "text-anchor": "middle" }, "time since the job started (s)"));

    const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.t_seconds).toFixed(1)},${y(p.watts).toFixed(1)}`).join("");
    const area = `${line}L${x(points[points.length - 1].t_seconds).toFixed(1)},${y(0)}L${x(points[0].t_seconds).toFixed(1)},${y(0)}Z`;
    chart.append(svg("path", { class: "idle-area", d: area }));
    if (baseline !== null) {
      // Above the baseline the area is the job's own energy: clip the area to that band.
      state.clipCount += 1;
      const clipId = `above-baseline-${state.clipCount}`;
      const clip = svg("clipPath", { id: clipId });
      clip.append(svg("rect", { x: m.left, y: m.top, width: plotW, height: Math.max(0, y(baseline) - m.top) }));
      chart.append(clip);
      chart.append(svg("path", { class: "net-area", d: area, fill: colour, "fill-opacity": 0.35, "clip-path": `url(#${clipId})` }));
    }
    drawEstimateBands(chart, points, x, m.top, plotH);
    chart.append(svg("line", { class: "axis", x1: m.left, x2: width - m.right, y1: y(0), y2: y(0) }));
    chart.append(svg("path", { class: "trace-line", d: line, stroke: colour, "data-points": points.length }));
    if (points.length <= MAX_DRAWN_POINTS) {
      for (const p of points) {
        const dot = svg("circle", { class: "trace-point", cx: x(p.t_seconds), cy: y(p.watts), r: 2.4, fill: colour });
        dot.append(svgTitle(`${fmt(p.t_seconds, 1)} s · ${wattsText(p.watts)} · ${sourceParts(p.source).kind}: ${sourceParts(p.source).label}`));
        chart.append(dot);
      }
    }
    if (baseline !== null) {
      chart.append(svg("line", { class: "baseline", x1: m.left, x2: width - m.right, y1: y(baseline), y2: y(baseline), "data-watts": baseline }));
      chart.append(svg("text", { class: "baseline-label", x: width - m.right - 4, y: y(baseline) + 14, "text-anchor": "end" },
        `idle baseline ${wattsText(baseline)}`));
    }
    holder.replaceChildren(chart);
  }

  /** Shade and label the stretches the estimator covered (the meter was lost). */
  function drawEstimateBands(chart, points, x, top, plotH) {
    let runStart = null;
    points.forEach((p, i) => {
      const estimate = isEstimate(p.source);
      if (estimate && runStart === null) runStart = p.t_seconds;
      if (runStart !== null && (!estimate || i === points.length - 1)) {
        const band = svg("rect", { class: "estimate-band", x: x(runStart), y: top, width: Math.max(2, x(p.t_seconds) - x(runStart)), height: plotH });
        band.append(svgTitle(`${fmt(runStart, 1)}–${fmt(p.t_seconds, 1)} s: estimated from CPU load, not metered`));
        chart.append(band, svg("text", { class: "estimate-label", x: x(runStart) + 3, y: top + 11 }, "estimate"));
        runStart = null;
      }
    });
  }

  // -- start -----------------------------------------------------------------------------------

  function start() {
    state.token = takeToken();
    renderTable();
    renderEnergyChart();
    renderTrace();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !state.stopped && !state.inFlight) schedule(0);
    });
    poll();
  }

  start();
})();
