/* OMS live ops dashboard: polls /ops/summary every 2 s and redraws; no build step, no CDN.
 * The admin token comes from ?token= (then dropped from the address bar) or a prompt, and is
 * kept in sessionStorage for this tab only. */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var TOKEN_KEY = "omsAdminToken";
  var SVGNS = "http://www.w3.org/2000/svg";
  var CHANNEL_COLOURS = {
    tmall: "#ff7a1a", jd: "#e5484d", douyin: "#2fd6e0", miniprogram: "#22c55e", manual: "#a78bfa"
  };
  var EXTRA_COLOURS = ["#facc15", "#f472b6", "#94a3b8", "#38bdf8", "#fb923c"];
  var CHANNEL_NAMES = { tmall: "Tmall", jd: "JD", douyin: "Douyin", miniprogram: "Mini-program", manual: "Manual" };

  var state = { polls: 0, ok: 0, errors: [], last: null, mapVersion: null, map: null, hexes: [], nodeEls: {} };
  window.__ops = state;
  window.addEventListener("error", function (e) { state.errors.push(String(e.message || e)); });

  // ---- token --------------------------------------------------------------------------------
  var params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  var passThrough = new URLSearchParams();
  ["since", "city"].forEach(function (k) { if (params.get(k)) passThrough.set(k, params.get(k)); });

  function token(ask) {
    var t = sessionStorage.getItem(TOKEN_KEY);
    if ((!t || ask) && typeof window.prompt === "function") {
      t = window.prompt("Admin token for the OMS ops dashboard (OMS_ADMIN_TOKEN)");
      if (t) sessionStorage.setItem(TOKEN_KEY, t.trim());
    }
    return t ? t.trim() : null;
  }
  var needToken = false;
  document.getElementById("status").addEventListener("click", function () {
    if (token(true)) { needToken = false; poll(); }
  });

  function api(path) {
    var t = token(false);
    if (!t) { needToken = true; return Promise.reject(new Error("no admin token: click to enter one")); }
    return fetch(path, { headers: { "Authorization": "Bearer " + t }, cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        needToken = true;
        throw new Error("admin token refused: click to enter it");
      }
      if (!r.ok) throw new Error(path + " answered " + r.status);
      return r.json();
    });
  }

  // ---- formatting ---------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }
  function fmtInt(n) { return (n || 0).toLocaleString("en-US"); }
  function yuan(fen) { return (fen || 0) / 100; }
  function fmtYuanShort(fen) {
    var y = yuan(fen);
    if (y >= 1e8) return "¥" + (y / 1e8).toFixed(2) + "亿";
    if (y >= 1e5) return "¥" + (y / 1e4).toFixed(1) + "万";
    return "¥" + y.toLocaleString("en-US", { maximumFractionDigits: 0 });
  }
  function fmtYuanExact(fen) {
    return "¥" + yuan(fen).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function fmtMs(v) { return v == null ? "–" : (v < 10 ? v.toFixed(1) : Math.round(v).toString()); }
  function hhmm(d) { return d.toTimeString().slice(0, 5); }
  function hhmmss(d) { return d.toTimeString().slice(0, 8); }
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function colourOf(channel, i) {
    return CHANNEL_COLOURS[channel] || EXTRA_COLOURS[i % EXTRA_COLOURS.length];
  }
  function setText(id, text) { var el = $(id); if (el.textContent !== text) el.textContent = text; }
  function svg(tag, attrs) {
    var el = document.createElementNS(SVGNS, tag);
    for (var k in attrs) el.setAttribute(k, attrs[k]);
    return el;
  }

  // ---- tiles --------------------------------------------------------------------------------
  function renderTiles(s) {
    setText("orders-total", fmtInt(s.totals.orders));
    setText("orders-sub", fmtInt(s.totals.accepted) + " accepted · " + fmtInt(s.totals.cancelled) + " cancelled");
    setText("gmv-total", fmtYuanShort(s.totals.gmv_fen));
    setText("gmv-sub", fmtYuanExact(s.totals.gmv_fen) + " · hour " + fmtYuanShort(s.last_hour.gmv_fen));
    var pm = s.orders_per_minute.total;
    var lastFull = pm.length > 1 ? pm[pm.length - 2] : 0;
    setText("opm", fmtInt(lastFull));
    setText("opm-sub", "this minute " + fmtInt(pm[pm.length - 1] || 0) + " · last hour " + fmtInt(s.last_hour.orders));
    setText("backorders", fmtInt(s.backorders.open));
    setText("backorders-sub", fmtInt(s.totals.backordered) + " of today's orders");
    $("backorders").parentNode.classList.toggle("warn", s.backorders.open > 0);
    setText("at-risk-total", fmtInt(s.at_risk_total));
    setText("at-risk-sub", fmtInt(s.open_picks) + " open picks in " + s.stores.filter(function (x) { return x.open_picks > 0; }).length + " nodes");
    $("at-risk-total").parentNode.classList.toggle("warn", s.at_risk_total > 0);
    var r = s.routing;
    $("routing").innerHTML = esc(fmtMs(r.p99_ms)) + '<span class="unit">ms</span>';
    setText("routing-sub", "p50 " + fmtMs(r.p50_ms) + " ms · max " + fmtMs(r.max_ms) + " ms");
    $("routing-sub").title = "over the last " + fmtInt(r.samples) + " routing decisions";

    var o = s.oversell;
    var tile = $("oversell-tile");
    tile.classList.remove("unknown");
    tile.classList.toggle("ok", o.ok);
    tile.classList.toggle("bad", !o.ok);
    setText("oversell-count", o.ok ? "0 ✓" : String(Math.max(o.count, o.redis_count)) + " ✗");
    setText("oversell-sub", o.ok ? "no oversold (node, SKU) · PostgreSQL + Redis"
      : "oversold pairs · PostgreSQL " + o.count + " · Redis " + o.redis_count);
    var alert = $("oversell-alert");
    alert.classList.toggle("hidden", o.ok);
    if (!o.ok) {
      var items = o.postgres.map(function (p) { return [p, "PostgreSQL"]; })
        .concat(o.redis.map(function (p) { return [p, "Redis"]; }));
      $("oversell-list").innerHTML = items.slice(0, 12).map(function (it) {
        var p = it[0];
        return '<span class="pair">' + esc(p.node_id) + " · " + esc(p.sku) + ": reserved " + p.reserved +
          " &gt; on-hand " + p.on_hand + " (" + it[1] + ")</span>";
      }).join("") + (items.length > 12 ? " … +" + (items.length - 12) + " more" : "");
    }
    // the server's own wording of the start (its time zone), e.g. 2024-11-11 00:00 +08:00
    var m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(?::[\d.]+)?(Z|[+-]\d\d:\d\d)?$/.exec(s.since);
    var sinceText = m ? m[1] + " " + m[2] + " " + (m[3] === "Z" || !m[3] ? "UTC" : m[3]) : s.since;
    setText("since", "Totals since " + sinceText +
      " · promise " + s.assumptions.delivery_promise_minutes + " min, courier " + s.assumptions.courier_minutes + " min");
  }

  // ---- orders per minute chart -----------------------------------------------------------------
  function niceMax(v) {
    if (v <= 5) return 5;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function renderChart(s) {
    var el = $("chart");
    var box = el.getBoundingClientRect();
    var W = Math.max(200, box.width), H = Math.max(100, box.height);
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    while (el.firstChild) el.removeChild(el.firstChild);
    var pm = s.orders_per_minute;
    var n = pm.minutes.length;
    var channels = Object.keys(pm.series);
    var max = 0;
    channels.forEach(function (c) { pm.series[c].forEach(function (v) { if (v > max) max = v; }); });
    pm.total.forEach(function (v) { if (v > max) max = v; });
    var top = niceMax(max);
    var padL = 44, padR = 12, padT = 8, padB = 22;
    var iw = W - padL - padR, ih = H - padT - padB;
    function x(i) { return padL + (n <= 1 ? 0 : (i / (n - 1)) * iw); }
    function y(v) { return padT + ih - (v / top) * ih; }
    for (var t = 0; t <= 4; t++) {
      var v = (top / 4) * t, yy = y(v);
      el.appendChild(svg("line", { x1: padL, x2: W - padR, y1: yy, y2: yy, "class": "grid-line" }));
      var lab = svg("text", { x: padL - 6, y: yy + 4, "text-anchor": "end" });
      lab.textContent = Number.isInteger(v) ? fmtInt(v) : v.toFixed(1);
      el.appendChild(lab);
    }
    for (var i = 0; i < n; i += 10) {
      var tl = svg("text", { x: x(i), y: H - 5, "text-anchor": i === 0 ? "start" : "middle" });
      tl.textContent = hhmm(new Date(pm.minutes[i]));
      el.appendChild(tl);
    }
    var nowl = svg("text", { x: x(n - 1), y: H - 5, "text-anchor": "end" });
    nowl.textContent = "now";
    el.appendChild(nowl);
    // total as a faint area, channels as lines
    var area = "M" + x(0) + "," + y(0);
    pm.total.forEach(function (v, i) { area += " L" + x(i).toFixed(1) + "," + y(v).toFixed(1); });
    area += " L" + x(n - 1) + "," + y(0) + " Z";
    el.appendChild(svg("path", { d: area, "class": "total" }));
    channels.forEach(function (c, ci) {
      var d = pm.series[c].map(function (v, i) { return (i ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
      el.appendChild(svg("path", { d: d, "class": "series", stroke: colourOf(c, ci) }));
    });
    var byChannel = {};
    s.channels.forEach(function (c) { byChannel[c.channel] = c; });
    $("legend").innerHTML = channels.length ? channels.map(function (c, ci) {
      var t = byChannel[c] || { orders: 0, gmv_fen: 0 };
      var series = pm.series[c];
      return '<span class="key"><span class="sw" style="background:' + colourOf(c, ci) + '"></span>' +
        esc(CHANNEL_NAMES[c] || c) + " <b>" + fmtInt(series[series.length - 2] || 0) + "/min</b>" +
        ' <span class="muted">' + fmtInt(t.orders) + " today · " + fmtYuanShort(t.gmv_fen) + "</span></span>";
    }).join("") : '<span class="muted">no orders in the last hour</span>';
  }

  // ---- map ------------------------------------------------------------------------------------
  var SCALE = ["#1e2a3f", "#1f6f43", "#3f9d3a", "#a3b81f", "#e0a416", "#ea6a12", "#dc2626"];

  function pickColour(picks, top) {
    if (!picks) return SCALE[0];
    var i = 1 + Math.min(SCALE.length - 2, Math.floor((picks / top) * (SCALE.length - 1)));
    return SCALE[Math.min(i, SCALE.length - 1)];
  }

  function buildMap(m) {
    var el = $("map");
    while (el.firstChild) el.removeChild(el.firstChild);
    state.hexes = [];
    state.nodeEls = {};
    if (!m.cells.length && !m.nodes.length) return;
    var k = Math.cos(m.center[0] * Math.PI / 180);
    function px(lat, lng) { return [lng * k * 1000, -lat * 1000]; }
    var minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    function grow(p) {
      if (p[0] < minX) minX = p[0]; if (p[0] > maxX) maxX = p[0];
      if (p[1] < minY) minY = p[1]; if (p[1] > maxY) maxY = p[1];
    }
    m.cells.forEach(function (c) { c.b.forEach(function (ll) { grow(px(ll[0], ll[1])); }); });
    m.nodes.forEach(function (n) { grow(px(n.lat, n.lng)); });
    var w = Math.max(maxX - minX, 1), h = Math.max(maxY - minY, 1), pad = Math.max(w, h) * 0.04;
    el.setAttribute("viewBox", [minX - pad, minY - pad, w + 2 * pad, h + 2 * pad].join(" "));
    el.setAttribute("preserveAspectRatio", "xMidYMid meet");
    var unit = Math.max(w, h) / 220;
    state.mapUnit = unit;
    var gHex = svg("g", {}), gNodes = svg("g", {});
    m.cells.forEach(function (c) {
      var pts = c.b.map(function (ll) { var p = px(ll[0], ll[1]); return p[0].toFixed(2) + "," + p[1].toFixed(2); }).join(" ");
      var poly = svg("polygon", { points: pts, "class": "hex", fill: SCALE[0], "data-node": c.n.join(" "), "data-cell": c.h });
      poly.appendChild(svg("title", {}));
      gHex.appendChild(poly);
      state.hexes.push({ poly: poly, nodes: c.n });
    });
    m.nodes.forEach(function (n) {
      var p = px(n.lat, n.lng), el2;
      if (n.kind === "warehouse") {
        el2 = svg("rect", { x: p[0] - unit * 1.6, y: p[1] - unit * 1.6, width: unit * 3.2, height: unit * 3.2, "class": "wh" });
      } else {
        el2 = svg("circle", { cx: p[0], cy: p[1], r: unit * 1.4, "class": "node" });
      }
      el2.appendChild(svg("title", {}));
      el2.querySelector("title").textContent = n.name + " (" + n.id + ")";
      gNodes.appendChild(el2);
      state.nodeEls[n.id] = { el: el2, node: n, x: p[0], y: p[1] };
    });
    state.gLabels = svg("g", {});
    el.appendChild(gHex);
    el.appendChild(gNodes);
    el.appendChild(state.gLabels);
    var note = m.cells.length + " H3 cells · res " + m.resolution + " · " + m.nodes.length + " nodes";
    if (m.elsewhere) note += " · " + m.elsewhere + " in other cities";
    setText("map-note", note);
  }

  function colourMap(s) {
    var byId = {};
    var top = 5;  // the scale runs to the busiest store drawn: a warehouse's queue would wash every store out
    s.stores.forEach(function (x) {
      byId[x.node_id] = x;
      if (x.kind === "store" && state.nodeEls[x.node_id] && x.open_picks > top) top = x.open_picks;
    });
    state.hexes.forEach(function (hx) {
      var picks = 0, risk = 0, names = [];
      hx.nodes.forEach(function (nid) {
        var st = byId[nid] || { open_picks: 0, at_risk: 0, name: nid, kind: "store" };
        if (st.kind !== "store") return;  // hexagons show store areas only
        picks += st.open_picks; risk += st.at_risk; names.push(st.name);
      });
      var fill = pickColour(picks, top);
      if (hx.poly.getAttribute("fill") !== fill) hx.poly.setAttribute("fill", fill);
      hx.poly.firstChild.textContent = names.join(", ") + ": " + picks + " open picks, " + risk + " at risk";
    });
    Object.keys(state.nodeEls).forEach(function (nid) {
      var ne = state.nodeEls[nid], st = byId[nid] || { open_picks: 0, at_risk: 0 };
      if (ne.node.kind !== "warehouse") ne.el.classList.toggle("risk", st.at_risk > 0);
      ne.el.firstChild.textContent = ne.node.name + " (" + nid + "): " + st.open_picks + " open picks, " + st.at_risk + " at risk";
    });
    // label the busiest stores on the map
    var g = state.gLabels;
    if (g) {
      while (g.firstChild) g.removeChild(g.firstChild);
      var busiest = s.stores.filter(function (x) { return x.kind === "store" && x.open_picks > 0 && state.nodeEls[x.node_id]; }).slice(0, 12);
      var placed = [], fs = state.mapUnit * 5.2;
      busiest.forEach(function (x) {
        if (placed.length >= 6) return;
        var ne = state.nodeEls[x.node_id];
        var text = shortName(x.name) + " " + x.open_picks;
        var w = 0;
        for (var i = 0; i < text.length; i++) w += text.charCodeAt(i) > 0x2e80 ? fs : fs * 0.6;
        var box = [ne.x + state.mapUnit * 1.8, ne.y - fs * 0.6, w, fs * 1.2];
        var clash = placed.some(function (b) {
          return box[0] < b[0] + b[2] && b[0] < box[0] + box[2] && box[1] < b[1] + b[3] && b[1] < box[1] + box[3];
        });
        if (clash) return;
        placed.push(box);
        var t = svg("text", { x: box[0], y: ne.y + fs * 0.35, "class": "label",
          "font-size": fs, "stroke-width": state.mapUnit * 0.6 });
        t.textContent = text;
        g.appendChild(t);
      });
    }
    var scale = SCALE.map(function (c) { return '<span style="background:' + c + '"></span>'; }).join("");
    var busy = s.stores.filter(function (x) { return x.kind === "store" && x.open_picks > 0 && state.nodeEls[x.node_id]; }).slice(0, 3).map(function (x) {
      return esc(shortName(x.name)) + " <b>" + x.open_picks + "</b>" + (x.capacity_per_hour ? " (" + x.capacity_per_hour + "/h)" : "");
    }).join(" · ");
    var wh = s.stores.filter(function (x) { return x.kind === "warehouse" && state.nodeEls[x.node_id]; }).map(function (x) {
      return esc(shortName(x.name)) + " <b>" + fmtInt(x.open_picks) + "</b>";
    }).join(" · ");
    $("map-legend").innerHTML = '<span>0</span><span class="scale">' + scale + "</span><span>" + top +
      " open picks per store</span>" + (busy ? '<span class="busy">Busiest: ' + busy + "</span>" : "") +
      (wh ? '<span class="busy">Warehouse: ' + wh + "</span>" : "");
  }

  function shortName(name) {
    // "南京东路店 Nanjing Rd E" -> "南京东路店": the first word is enough on a map
    var first = String(name).split(" ")[0];
    return first.length >= 2 ? first : String(name);
  }

  function renderMap(s) {
    if (s.map_version !== state.mapVersion) {
      var q = passThrough.get("city") ? "?city=" + encodeURIComponent(passThrough.get("city")) : "";
      var want = s.map_version;
      state.mapVersion = want;  // one fetch per version
      return api("/ops/map" + q).then(function (m) {
        state.map = m;
        buildMap(m);
        colourMap(s);
      }).catch(function (e) { state.mapVersion = null; throw e; });
    }
    colourMap(s);
    return Promise.resolve();
  }

  // ---- lists ----------------------------------------------------------------------------------
  function renderAtRisk(s) {
    var table = $("at-risk"), body = table.tBodies[0];
    var list = s.at_risk;
    setText("at-risk-note", s.at_risk_total ? fmtInt(s.at_risk_total) + " in total · least time left first" : "");
    if (!list.length) {
      body.innerHTML = '<tr><td colspan="3" class="empty good">No order at risk of missing its promise</td></tr>';
      return;
    }
    var html = list.map(function (r) {
      var cls = r.minutes_left < 0 ? "late" : (r.minutes_left < 10 ? "soon" : "");
      var left = r.minutes_left < 0 ? "late " + Math.max(1, Math.ceil(-r.minutes_left)) : Math.floor(r.minutes_left).toString();
      return "<tr><td title=\"" + esc(r.order_id) + '"><span class="ch" style="background:' + colourOf(r.channel, 0) + '"></span>' +
        esc(r.external_id) + "</td><td title=\"" + esc(r.node_id) + "\">" + esc(shortName(r.node_name)) +
        ' <span class="muted">' + esc(r.status) + "</span></td>" +
        '<td class="num ' + cls + '">' + left + "</td></tr>";
    }).join("");
    body.innerHTML = html;
  }

  function renderReasons(s) {
    var ul = $("reasons");
    var rs = s.backorders.reasons;
    if (!rs.length) { ul.innerHTML = '<li class="empty good">Nothing in backorder</li>'; return; }
    var max = rs[0].orders || 1;
    ul.innerHTML = rs.map(function (r) {
      return '<li title="' + esc(r.example || r.reason) + '"><span class="bar" style="width:' + (100 * r.orders / max).toFixed(1) +
        '%"></span><span class="n">' + fmtInt(r.orders) + '</span><span class="r">' + esc(r.reason) + "</span></li>";
    }).join("");
  }

  function renderOutOfStock(s) {
    var body = $("oos").tBodies[0];
    if (!s.out_of_stock.length) {
      body.innerHTML = '<tr><td colspan="4" class="empty good">No stock-outs today</td></tr>';
      return;
    }
    body.innerHTML = s.out_of_stock.map(function (r) {
      // where it ran out: the nodes that stock it and have none left; else the latest reason
      var where = (r.ran_out_at || []).map(function (n) { return shortName(n.name); }).join(", ");
      if (where && r.ran_out_count > r.ran_out_at.length) where += " +" + (r.ran_out_count - r.ran_out_at.length);
      var note = where ? "ran out at " + where : (r.example || "");
      return "<tr><td title=\"" + esc(r.name + (r.example ? " — " + r.example : "")) + "\">" + esc(r.sku) +
        ' <span class="muted">' + esc(r.name) + '</span><div class="where">' + esc(note) + "</div></td>" +
        '<td class="num">' + fmtInt(r.units) + '</td><td class="num">' + fmtInt(r.orders) + "</td>" +
        '<td class="num' + (r.available_now ? "" : " late") + '" title="still available at other nodes">' +
        fmtInt(r.available_now) + "</td></tr>";
    }).join("");
  }

  // ---- loop -----------------------------------------------------------------------------------
  function setStatus(ok, text) {
    var dot = $("status-dot");
    dot.classList.toggle("ok", ok);
    dot.classList.toggle("bad", !ok);
    setText("status-text", text);
  }

  function render(s) {
    state.last = s;
    renderTiles(s);
    renderChart(s);
    renderAtRisk(s);
    renderReasons(s);
    renderOutOfStock(s);
    return renderMap(s);
  }

  var timer = null;
  function poll() {
    clearTimeout(timer);
    state.polls++;
    var q = passThrough.toString();
    api("/ops/summary" + (q ? "?" + q : "")).then(render).then(function () {
      state.ok++;
      setStatus(true, "live · updated " + hhmmss(new Date()));
    }).catch(function (e) {
      state.errors.push(String(e && e.message || e));
      if (state.errors.length > 50) state.errors.shift();
      setStatus(false, String(e && e.message || e));
    }).then(function () {
      timer = setTimeout(poll, needToken ? 10000 : POLL_MS);
    });
  }

  function tick() { setText("clock", hhmmss(new Date())); }
  setInterval(tick, 1000);
  tick();
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (state.last) renderChart(state.last);
    }, 150);
  });
  if (!sessionStorage.getItem(TOKEN_KEY)) token(true);
  poll();
})();
