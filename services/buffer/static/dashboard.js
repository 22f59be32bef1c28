// Live dashboard of the SSR buffer: polls GET /v1/stats and draws inline SVG charts.
// No dependencies.  URL parameters: ?token=<read token> (sent as a bearer token), ?interval=<ms>.
(function () {
  "use strict";
  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  var interval = Math.max(250, parseInt(params.get("interval") || "2000", 10) || 2000);
  var SVGNS = "http://www.w3.org/2000/svg";
  var W = 480, H = 220, PAD = { l: 44, r: 10, t: 10, b: 34 };
  var COLORS = ["#2f6fde", "#d9534f", "#3a9d5d", "#e0a100", "#7b52ab", "#17a2b8"];

  function el(name, attrs, parent) {
    var e = document.createElementNS(SVGNS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, anchor, cls) {
    var t = el("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    if (cls) t.setAttribute("class", cls);
    t.textContent = s;
    return t;
  }
  function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(digits === undefined ? 2 : digits);
  }
  function pct(v) { return (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + "%"; }
  function empty(svg, msg) {
    text(svg, W / 2, H / 2, msg || "no data yet", "middle", "empty");
    svg.setAttribute("data-points", "0");
  }

  // series: [{name, points: [[x, y], ...]}]; opts: {yMin, yMax, xFmt}
  function lineChart(svg, series, opts) {
    opts = opts || {};
    clear(svg);
    var xs = [], ys = [], n = 0;
    series.forEach(function (s) {
      s.points = s.points.filter(function (p) { return p[1] !== null && p[1] !== undefined && isFinite(p[1]); });
      s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); n++; });
    });
    if (n === 0) return empty(svg);
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    var y0 = opts.yMin !== undefined ? opts.yMin : Math.min(0, Math.min.apply(null, ys));
    var y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys);
    if (y1 === y0) y1 = y0 + 1;
    var pw = W - PAD.l - PAD.r, ph = H - PAD.t - PAD.b;
    function sx(x) { return PAD.l + (x - x0) / (x1 - x0) * pw; }
    function sy(y) { return PAD.t + ph - (y - y0) / (y1 - y0) * ph; }
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4;
      el("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(yv), y2: sy(yv), "class": "grid" }, svg);
      text(svg, PAD.l - 4, sy(yv) + 3, fmt(yv), "end");
    }
    el("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: PAD.t + ph, "class": "axis" }, svg);
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: PAD.t + ph, y2: PAD.t + ph, "class": "axis" }, svg);
    var xf = opts.xFmt || fmt;
    text(svg, PAD.l, H - PAD.b + 14, xf(x0), "start");
    text(svg, W - PAD.r, H - PAD.b + 14, xf(x1), "end");
    series.forEach(function (s, k) {
      var color = COLORS[k % COLORS.length];
      if (s.points.length === 1) {
        el("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, fill: color, "class": "dot" }, svg);
      } else if (s.points.length > 1) {
        var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join("");
        el("path", { d: d, fill: "none", stroke: color, "stroke-width": 1.8, "class": "line" }, svg);
      }
      var lx = PAD.l + 4 + k * 120;
      el("rect", { x: lx, y: H - 12, width: 10, height: 3, fill: color }, svg);
      text(svg, lx + 14, H - 8, s.name + " (" + s.points.length + ")");
    });
    svg.setAttribute("data-points", String(n));
  }

  function barChart(svg, labels, values, opts) {
    opts = opts || {};
    clear(svg);
    var total = values.reduce(function (a, b) { return a + b; }, 0);
    if (!labels.length || total === 0) { empty(svg); svg.setAttribute("data-total", "0"); return; }
    var vmax = Math.max.apply(null, values);
    var pw = W - PAD.l - PAD.r, ph = H - PAD.t - PAD.b;
    var bw = pw / labels.length;
    for (var i = 0; i <= 4; i++) {
      var yv = vmax * i / 4, y = PAD.t + ph - ph * i / 4;
      el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, "class": "grid" }, svg);
      text(svg, PAD.l - 4, y + 3, fmt(yv, 0), "end");
    }
    var every = Math.max(1, Math.ceil(labels.length / 10));
    labels.forEach(function (lab, i) {
      var h = vmax ? values[i] / vmax * ph : 0;
      var r = el("rect", { x: PAD.l + i * bw + 1, y: PAD.t + ph - h, width: Math.max(1, bw - 2), height: h,
        fill: opts.color || COLORS[0], "class": "bar", "data-value": values[i] }, svg);
      var tt = el("title", {}, r);
      tt.textContent = lab + ": " + values[i];
      if (i % every === 0) text(svg, PAD.l + i * bw + bw / 2, PAD.t + ph + 12, lab, "middle");
    });
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: PAD.t + ph, y2: PAD.t + ph, "class": "axis" }, svg);
    if (opts.xLabel) text(svg, W / 2, H - 4, opts.xLabel, "middle");
    svg.setAttribute("data-points", String(labels.length));
    svg.setAttribute("data-total", String(total));
  }

  function table(tbl, rows) {
    var body = tbl.querySelector("tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      r.forEach(function (c, i) {
        var td = document.createElement("td");
        if (i > 0) td.className = "num";
        td.textContent = c;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    tbl.setAttribute("data-rows", String(rows.length));
  }

  function set(id, v) { document.getElementById(id).textContent = v; }

  function render(st) {
    var sz = st.sizes, tot = st.totals, sh = st.shares;
    set("v-fresh", fmt(sz.fresh)); set("v-replay", fmt(sz.replay)); set("v-zero", fmt(sz.zero_fresh));
    set("v-total", fmt(sz.total)); set("v-groups", fmt(tot.groups)); set("v-eff", pct(sh.effective_samples));
    set("v-allcw", pct(sh.all_correct_groups) + " / " + pct(sh.all_wrong_groups));
    set("v-rates", fmt(st.rates.insert_groups_per_s, 1) + " / " + fmt(st.rates.draws_per_s, 1));
    set("v-queue", fmt(st.queue.depth) + " / " + fmt(st.queue.pending));
    set("v-policy", (st.policy_version === null ? "–" : st.policy_version) + " / " + st.servers.live);

    var series = st.series || [];
    var t0 = series.length ? series[0].t : 0;
    function pts(key) { return series.map(function (p) { return [p.t - t0, p[key]]; }); }
    var tf = function (x) { return fmt(x, Math.abs(x) < 10 ? 2 : 0) + " s"; };
    lineChart(document.getElementById("chart-effective"), [
      { name: "effective", points: pts("effective_share") },
      { name: "zero-adv", points: pts("zero_share") },
    ], { yMin: 0, yMax: 1, xFmt: tf });
    var bv = st.by_version || [];
    lineChart(document.getElementById("chart-versions"), [
      { name: "effective", points: bv.map(function (r) { return [r.version, r.effective_group_share]; }) },
      { name: "all-correct", points: bv.map(function (r) { return [r.version, r.all_correct_share]; }) },
      { name: "all-wrong", points: bv.map(function (r) { return [r.version, r.all_wrong_share]; }) },
    ], { yMin: 0, yMax: 1, xFmt: function (x) { return "v" + fmt(x, 0); } });
    lineChart(document.getElementById("chart-sizes"), [
      { name: "fresh", points: pts("fresh") }, { name: "replay", points: pts("replay") }, { name: "zero", points: pts("zero") },
    ], { xFmt: tf });
    lineChart(document.getElementById("chart-rates"), [
      { name: "groups/s", points: pts("insert_groups_per_s") }, { name: "draws/s", points: pts("draws_per_s") },
    ], { xFmt: tf });

    var ah = st.advantage_histogram;
    var labels = ah.counts.map(function (_, i) { return fmt((ah.edges[i] + ah.edges[i + 1]) / 2, 2); });
    barChart(document.getElementById("chart-adv"), labels, ah.counts, { xLabel: "advantage" });
    var sth = st.staleness_histogram;
    barChart(document.getElementById("chart-stale"), sth.labels, sth.counts, { color: COLORS[3], xLabel: "lag (versions)" });
    barChart(document.getElementById("chart-reuse"), st.reuse.times_sampled.map(String), st.reuse.draws,
      { color: COLORS[2], xLabel: "times sampled" });

    function rows(obj) {
      return Object.keys(obj).sort().map(function (k) {
        var g = obj[k].groups, e = obj[k].effective_groups;
        return [k, String(g), g ? (100 * e / g).toFixed(1) + "%" : "–"];
      });
    }
    table(document.getElementById("table-categories"), rows(st.categories || {}));
    table(document.getElementById("table-sources"), rows(st.sources || {}));

    var when = new Date(st.time * 1000);
    set("status", "namespace " + st.namespace + " · mode " + st.config.mode + " · alpha " + st.config.alpha +
      " · updated " + when.toLocaleTimeString());
    document.body.setAttribute("data-status", "ok");
    document.body.setAttribute("data-renders", String(parseInt(document.body.getAttribute("data-renders"), 10) + 1));
    document.body.setAttribute("data-stats-groups", String(tot.groups));
  }

  function poll() {
    var headers = token ? { "Authorization": "Bearer " + token } : {};
    fetch("/v1/stats?series=512", { headers: headers, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("GET /v1/stats: HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch(function (e) {
        document.body.setAttribute("data-status", "error");
        set("status", String(e.message || e));
      })
      .then(function () { setTimeout(poll, interval); });
  }
  poll();
})();
