// Rating page: the keys 1, 2 and 3 press "1 is better", "2 is better" and "Tie" (not while typing in a field).
(function () {
  "use strict";
  var ids = { "1": "rate-1", "2": "rate-2", "3": "rate-tie" };
  document.addEventListener("keydown", function (e) {
    var t = e.target && e.target.tagName;
    if (e.ctrlKey || e.metaKey || e.altKey || t === "INPUT" || t === "TEXTAREA" || t === "SELECT") return;
    var b = ids[e.key] && document.getElementById(ids[e.key]);
    if (b) { e.preventDefault(); b.click(); }
  });
})();
