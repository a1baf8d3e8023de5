// Column choice: the preview of the chat examples is redrawn as the columns change (the same rule as the
// server's data/mapping.example: input and answer must both be non-empty). Text only, never HTML.
(function () {
  "use strict";
  var sample = JSON.parse(document.getElementById("sample-data").textContent || "[]");
  var sel = {};
  ["input", "output", "label", "system"].forEach(function (k) { sel[k] = document.getElementById(k); });
  if (!sel.input) return;
  var preview = document.getElementById("preview");
  var refresh = document.getElementById("refresh-preview");
  if (refresh) refresh.hidden = true;  // the preview follows the choices by itself
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function draw() {
    var inp = sel.input.value, ans = sel.output.value || sel.label.value, sys = sel.system.value.trim();
    while (preview.firstChild) preview.removeChild(preview.firstChild);
    sample.forEach(function (row, i) {
      var box = el("div", "example");
      box.appendChild(el("p", "ex-n", "Row " + (i + 1)));
      var text = (row[inp] || "").trim(), answer = (row[ans] || "").trim();
      if (!text || !answer || inp === ans) {
        var why = inp === ans ? "the input and the answer are the same column" :
          (!text ? (inp || "input") + ": the input is empty" : (ans || "output") + ": the answer is empty");
        box.appendChild(el("p", "warn-text", "Not an example: " + why + " (it will be set aside)"));
      } else {
        var msgs = (sys ? [["system", sys]] : []).concat([["user", text], ["assistant", answer]]);
        msgs.forEach(function (m) {
          var p = el("p", "msg");
          p.appendChild(el("span", "role", m[0]));
          p.appendChild(document.createTextNode(" " + m[1]));
          box.appendChild(p);
        });
      }
      preview.appendChild(box);
    });
  }
  sel.output.addEventListener("change", function () { if (sel.output.value) sel.label.value = ""; draw(); });
  sel.label.addEventListener("change", function () { if (sel.label.value) sel.output.value = ""; draw(); });
  sel.input.addEventListener("change", draw);
  sel.system.addEventListener("input", draw);
})();
