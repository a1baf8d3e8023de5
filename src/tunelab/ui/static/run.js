// Live progress of one run: its events over SSE, the step counter, the status and the loss curve.
(function () {
  "use strict";
  var script = document.currentScript;
  var run = script.getAttribute("data-run");
  var curve = JSON.parse(document.getElementById("curve-data").textContent || "[]");
  var svg = document.getElementById("curve");
  var NS = "http://www.w3.org/2000/svg";

  function draw() {
    while (svg.lastChild && svg.lastChild.nodeName !== "title") svg.removeChild(svg.lastChild);
    if (curve.length < 1) return;
    var xs = curve.map(function (p) { return p[0]; }), ys = curve.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var pts = curve.map(function (p) {
      var x = 30 + (x1 > x0 ? (p[0] - x0) / (x1 - x0) : 0.5) * 560;
      var y = 10 + (y1 > y0 ? (y1 - p[1]) / (y1 - y0) : 0.5) * 170;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#1d4ed8");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
    document.getElementById("last-loss").textContent =
      "step " + xs[xs.length - 1] + ": " + ys[ys.length - 1].toFixed(4);
  }
  draw();
  if (!window.EventSource || script.getAttribute("data-active") !== "1") return;  // finished: nothing to follow
  var events = document.getElementById("events");
  var src = new EventSource("/runs/" + encodeURIComponent(run) + "/stream?after=" + encodeURIComponent(script.getAttribute("data-after") || "0"));
  var seen = {};
  src.onmessage = function (m) {
    var e = JSON.parse(m.data);
    if (seen[e.id]) return;
    seen[e.id] = true;
    if (e.type === "metrics" && e.data) {
      curve.push([e.data.step, e.data.train_loss]);
      document.getElementById("progress").textContent = "step " + e.data.step + " of " + e.data.total_steps;
      var bar = document.getElementById("bar");
      bar.max = e.data.total_steps; bar.value = e.data.step;
      draw();
    }
    var li = document.createElement("li");
    li.className = "level-" + e.level;
    li.textContent = e.message;  // text, never HTML
    events.insertBefore(li, events.firstChild);
  };
  src.addEventListener("eta", function (m) {
    document.getElementById("eta").textContent = JSON.parse(m.data).eta || "";
  });
  src.addEventListener("end", function (m) {
    var st = JSON.parse(m.data).status, el = document.getElementById("status");
    el.textContent = st; el.className = "status status-" + st;
    src.close();
    document.getElementById("eta").textContent = "";
    if (st === "succeeded") window.location.reload();  // the comparison and the links to the next steps
  });
})();
