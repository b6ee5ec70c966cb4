// The thought viewer (latent_thoughts.report.viewer): plain JavaScript over the JSON the section
// embeds (viewer_data documents its keys). It renders one page of chunks at a time, so a source of
// 10,000 chunks costs one pass of filtering per change and 50 rendered chunks.
(function () {
  "use strict";
  var section = document.getElementById("lt-viewer");
  var started = performance.now();
  var data = JSON.parse(document.getElementById("lt-viewer-data").textContent);
  var root = section.querySelector(".lt-root");
  var state = { src: 0, pol: 0, valid: "all", doc: -1, q: "", page: 0, show: "p" };
  var haystacks = {};
  var shown = [];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function num(value, digits) {
    if (value === null || value === undefined) return "–";
    return value.toFixed(digits === undefined ? 3 : digits);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%";
  }

  function option(select, value, label) {
    var node = el("option", null, label);
    node.value = String(value);
    select.appendChild(node);
    return node;
  }

  function labelled(text, control) {
    var label = el("label", "lt-control");
    label.appendChild(el("span", null, text));
    label.appendChild(control);
    return label;
  }

  // --- the summary table of every source -----------------------------------------------------------
  function summaryTable() {
    var table = el("table", "lt-summary");
    var head = el("tr");
    ["iteration", "source", "file", "chunks", "with a thought", "valid (selected)", "mean ESS", "mean bound"].forEach(
      function (name) {
        head.appendChild(el("th", null, name));
      }
    );
    table.appendChild(el("thead")).appendChild(head);
    var body = el("tbody");
    data.sources.forEach(function (source) {
      var row = el("tr");
      var stats = source.stats;
      [
        source.it === null ? "–" : String(source.it),
        source.name,
        source.file,
        String(stats.chunks),
        String(stats.thoughts),
        source.checker ? percent(stats.valid) : "checker n/a",
        num(stats.ess),
        num(stats.bound),
      ].forEach(function (value) {
        row.appendChild(el("td", null, value));
      });
      body.appendChild(row);
    });
    table.appendChild(body);
    return table;
  }

  // --- controls --------------------------------------------------------------------------------------
  var controls = el("div", "lt-controls");
  var sourceSelect = el("select", "lt-source");
  data.sources.forEach(function (source, index) {
    option(sourceSelect, index, source.name);
  });
  var policySelect = el("select", "lt-policy");
  var validSelect = el("select", "lt-validity");
  option(validSelect, "all", "all");
  option(validSelect, "valid", "valid");
  option(validSelect, "invalid", "invalid");
  var docSelect = el("select", "lt-doc");
  var search = el("input", "lt-search");
  search.type = "search";
  search.placeholder = "text in a chunk or a thought";
  var showSelect = el("select", "lt-show");
  option(showSelect, "p", "prior position (before the chunk)");
  option(showSelect, "q", "posterior position (after the chunk)");
  controls.appendChild(labelled("iteration", sourceSelect));
  controls.appendChild(labelled("policy", policySelect));
  controls.appendChild(labelled("validity", validSelect));
  controls.appendChild(labelled("document", docSelect));
  controls.appendChild(labelled("search", search));
  var showControl = labelled("show thoughts in the", showSelect);
  controls.appendChild(showControl);

  var note = el("p", "lt-note");
  var pager = el("div", "lt-pager");
  var prev = el("button", "lt-prev", "‹ previous");
  var next = el("button", "lt-next", "next ›");
  var count = el("span", "lt-count");
  pager.appendChild(prev);
  pager.appendChild(count);
  pager.appendChild(next);
  var list = el("div", "lt-chunks");

  root.appendChild(summaryTable());
  root.appendChild(controls);
  root.appendChild(note);
  root.appendChild(pager);
  root.appendChild(list);

  function source() {
    return data.sources[state.src];
  }

  function selection(s) {
    return s.kind === "estep" ? s.sel[state.pol] : null;
  }

  // The checker's verdict on the thought a chunk trains with (null: none, or no checker).
  function verdict(s, row, picks) {
    if (s.kind === "teacher") return s.v[row];
    var pick = picks[row];
    if (pick < 0 || !s.sv[row]) return null;
    return s.sv[row][pick];
  }

  function haystack(index) {
    if (haystacks[index]) return haystacks[index];
    var s = data.sources[index];
    var f = data.files[s.f];
    var out = new Array(f.x.length);
    for (var row = 0; row < f.x.length; row++) {
      var parts = [f.x[row]];
      if (s.kind === "teacher") {
        if (s.t[row] !== null) parts.push(s.t[row]);
      } else if (s.s[row] !== null) {
        parts = parts.concat(s.s[row]);
      }
      out[row] = parts.join("\u0001").toLowerCase();
    }
    haystacks[index] = out;
    return out;
  }

  function filter() {
    var s = source();
    var f = data.files[s.f];
    var picks = selection(s);
    var query = state.q.toLowerCase();
    var hay = query ? haystack(state.src) : null;
    var out = [];
    for (var row = 0; row < f.x.length; row++) {
      if (state.doc >= 0 && f.d[row] !== state.doc) continue;
      if (state.valid !== "all") {
        var v = verdict(s, row, picks);
        if (v === null || v === undefined || (state.valid === "valid") !== (v === 1)) continue;
      }
      if (hay !== null && hay[row].indexOf(query) < 0) continue;
      out.push(row);
    }
    shown = out;
  }

  // --- one chunk -------------------------------------------------------------------------------------
  function thoughtText(text, claims) {
    var node = el("div", "lt-thought-text");
    var at = 0;
    for (var c = 0; claims && c < claims.length; c += 3) {
      if (claims[c] > at) node.appendChild(document.createTextNode(text.slice(at, claims[c])));
      var mark = el("mark", claims[c + 2] ? "lt-claim lt-true" : "lt-claim lt-false", text.slice(claims[c], claims[c + 1]));
      mark.title = claims[c + 2] ? "true claim" : "false claim";
      node.appendChild(mark);
      at = claims[c + 1];
    }
    if (at < text.length) node.appendChild(document.createTextNode(text.slice(at)));
    if (!text.length) node.appendChild(el("span", "lt-missing", "(empty thought)"));
    return node;
  }

  function verdictBadge(v) {
    if (v === null || v === undefined) return null;
    return el("span", v ? "lt-badge lt-valid" : "lt-badge lt-invalid", v ? "valid" : "invalid");
  }

  function thoughtBox(title, text, claims, layout, v) {
    var box = el("div", "lt-thought lt-" + (layout === "p" ? "prior" : "posterior"));
    var head = el("div", "lt-thought-title");
    head.appendChild(el("span", null, title));
    var badge = verdictBadge(v);
    if (badge) head.appendChild(badge);
    box.appendChild(head);
    box.appendChild(thoughtText(text, claims));
    return box;
  }

  function layoutBadge(s, row, hasThought) {
    if (!hasThought) return el("span", "lt-badge lt-raw", "raw: no thought, trains as plain text");
    if (s.lay.mode === "redrawn") return el("span", "lt-badge lt-drawn", "prior/posterior drawn in training");
    return s.lay.c[row] === "q"
      ? el("span", "lt-badge lt-posterior-badge", "posterior: thought after the chunk")
      : el("span", "lt-badge lt-prior-badge", "prior: thought before the chunk");
  }

  function samplesTable(s, row, pick) {
    var table = el("table", "lt-samples");
    var head = el("tr");
    ["#", "thought", "tokens", "log q", "log p", "log w", "weight", "checker", "selected"].forEach(function (name) {
      head.appendChild(el("th", null, name));
    });
    table.appendChild(el("thead")).appendChild(head);
    var body = el("tbody");
    var runPick = s.sel[0][row];
    for (var k = 0; k < s.s[row].length; k++) {
      var tr = el("tr", k === pick ? "lt-chosen" : null);
      tr.appendChild(el("td", null, String(k)));
      var cell = el("td", "lt-sample-text");
      cell.appendChild(thoughtText(s.s[row][k], s.scl[row] ? s.scl[row][k] : null));
      tr.appendChild(cell);
      var cut = s.fin[row] && s.fin[row][k] === "l" ? " (cut)" : "";
      tr.appendChild(el("td", "lt-num", String(s.tok[row][k]) + cut));
      tr.appendChild(el("td", "lt-num", num(s.q[row][k])));
      tr.appendChild(el("td", "lt-num", num(s.p[row][k])));
      tr.appendChild(el("td", "lt-num", num(s.w[row][k])));
      var weight = el("td", "lt-num lt-weight");
      var bar = el("span", "lt-bar");
      bar.style.width = Math.round(100 * (s.nw[row][k] || 0)) + "%";
      weight.appendChild(bar);
      weight.appendChild(el("span", null, num(s.nw[row][k])));
      tr.appendChild(weight);
      var checked = el("td");
      var badge = verdictBadge(s.sv[row] ? s.sv[row][k] : null);
      if (badge) checked.appendChild(badge);
      tr.appendChild(checked);
      var marks = [];
      if (k === pick) marks.push("★ " + s.pols[state.pol]);
      if (state.pol !== 0 && k === runPick) marks.push("☆ " + s.pols[0] + " (this run)");
      tr.appendChild(el("td", "lt-mark", marks.join(" · ")));
      body.appendChild(tr);
    }
    table.appendChild(body);
    return table;
  }

  function chunkCard(s, f, row, picks) {
    var card = el("article", "lt-chunk");
    card.dataset.row = String(row);
    card.dataset.doc = f.docs[f.d[row]];
    card.dataset.chunk = String(f.i[row]);
    var thought = null;
    var claims = null;
    var title = "thought";
    var v = verdict(s, row, picks);
    if (s.kind === "teacher") {
      thought = s.t[row];
      claims = s.cl[row];
    } else if (s.s[row] !== null && picks[row] >= 0) {
      thought = s.s[row][picks[row]];
      claims = s.scl[row] ? s.scl[row][picks[row]] : null;
      title = "selected thought (#" + picks[row] + ", " + s.pols[state.pol] + ")";
    }
    if (v !== null && v !== undefined) card.dataset.valid = v ? "1" : "0";
    var head = el("header", "lt-chunk-head");
    head.appendChild(el("span", "lt-where", card.dataset.doc + " · chunk " + card.dataset.chunk));
    head.appendChild(layoutBadge(s, row, thought !== null));
    if (s.kind === "estep" && s.s[row] !== null) {
      head.appendChild(el("span", "lt-stat", "ESS " + num(s.ess[row]) + " of " + s.s[row].length));
      head.appendChild(el("span", "lt-stat", "log mean w " + num(s.b[row])));
    }
    card.appendChild(head);
    var layout = s.lay.mode === "redrawn" ? state.show : s.lay.c[row];
    var box = thought !== null ? thoughtBox(title, thought, claims, layout, v) : null;
    if (box && layout === "p") card.appendChild(box);
    card.appendChild(el("div", "lt-text", f.x[row]));
    if (box && layout === "q") card.appendChild(box);
    if (thought === null) {
      var why;
      if (s.kind === "teacher") why = s.note[row] || "no thought";
      else if (s.s[row] === null) why = "no samples for this chunk";
      else why = "the " + s.pols[state.pol] + " policy keeps no thought";
      card.appendChild(el("p", "lt-missing", why));
    } else if (s.kind === "teacher" && s.note[row]) {
      card.appendChild(el("p", "lt-missing", s.note[row]));
    }
    if (s.kind === "estep" && s.s[row] !== null) card.appendChild(samplesTable(s, row, picks[row]));
    return card;
  }

  // --- the page ----------------------------------------------------------------------------------
  function layoutNote(s) {
    var lay = s.lay;
    var how =
      lay.mode === "redrawn"
        ? "each chunk's layout is drawn anew on every pass over the file (redraw_layouts), so a thought trains in either position; the toggle shows one"
        : "one seeded draw per chunk holds for the whole training run";
    var by = lay.by
      ? "Layouts of training run " + lay.by
      : "No training run in this folder reads this file: layouts under the default format";
    var text =
      by + " (format seed " + lay.seed + ", posterior probability " + lay.post + "): " + how + ". " +
      "Prior: SOL PRIOR z EOL x, the thought before its chunk; posterior: SOL EOL x SOL POST z EOL, after it.";
    if (!s.checker) text += " The testbed checker does not apply to these chunks.";
    return text;
  }

  function render() {
    var s = source();
    var f = data.files[s.f];
    var picks = selection(s);
    var pages = Math.max(1, Math.ceil(shown.length / data.page));
    state.page = Math.min(state.page, pages - 1);
    var first = state.page * data.page;
    var rows = shown.slice(first, first + data.page);
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      fragment.appendChild(chunkCard(s, f, row, picks));
    });
    list.replaceChildren(fragment);
    if (!rows.length) list.appendChild(el("p", "lt-missing", "No chunk matches these filters."));
    count.textContent =
      shown.length + " of " + f.x.length + " chunks · page " + (state.page + 1) + " of " + pages;
    count.dataset.shown = String(shown.length);
    count.dataset.query = state.q;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
  }

  function refresh() {
    filter();
    render();
  }

  function setSource(index) {
    state.src = index;
    state.pol = 0;
    state.doc = -1;
    state.page = 0;
    var s = source();
    var f = data.files[s.f];
    policySelect.replaceChildren();
    if (s.kind === "estep") {
      s.pols.forEach(function (name, i) {
        option(policySelect, i, i === 0 ? name + " (this run's)" : name + " (would select)");
      });
    } else {
      option(policySelect, 0, "– (one thought per chunk)");
    }
    policySelect.disabled = s.kind !== "estep";
    validSelect.disabled = !s.checker;
    if (!s.checker) state.valid = validSelect.value = "all";
    docSelect.replaceChildren();
    option(docSelect, -1, "all " + f.docs.length + " documents");
    f.docs.forEach(function (doc, i) {
      option(docSelect, i, doc);
    });
    showControl.style.display = s.lay.mode === "redrawn" ? "" : "none";
    note.textContent = layoutNote(s);
    refresh();
  }

  sourceSelect.addEventListener("change", function () {
    setSource(Number(sourceSelect.value));
  });
  policySelect.addEventListener("change", function () {
    state.pol = Number(policySelect.value);
    state.page = 0;
    refresh();
  });
  validSelect.addEventListener("change", function () {
    state.valid = validSelect.value;
    state.page = 0;
    refresh();
  });
  docSelect.addEventListener("change", function () {
    state.doc = Number(docSelect.value);
    state.page = 0;
    refresh();
  });
  showSelect.addEventListener("change", function () {
    state.show = showSelect.value;
    render();
  });
  var timer = null;
  search.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      state.q = search.value;
      state.page = 0;
      refresh();
    }, 120);
  });
  prev.addEventListener("click", function () {
    state.page -= 1;
    render();
    section.scrollIntoView();
  });
  next.addEventListener("click", function () {
    state.page += 1;
    render();
    section.scrollIntoView();
  });

  setSource(0);
  section.dataset.renderMs = String(performance.now() - started);
  section.dataset.readyAt = String(performance.now());
  section.dataset.ready = "1";
})();
