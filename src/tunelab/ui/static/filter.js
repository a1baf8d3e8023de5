// Compare page: the filters apply as they change (the form still works without script).
(function () {
  "use strict";
  var show = document.getElementById("show"), q = document.getElementById("q");
  var items = Array.prototype.slice.call(document.querySelectorAll("#examples .diff"));
  var count = document.getElementById("shown-count");
  function apply() {
    var k = show.value, t = q.value.trim().toLowerCase(), n = 0;
    items.forEach(function (el) {
      var ok = (k === "all" || el.getAttribute("data-kind") === k) &&
        (!t || el.textContent.toLowerCase().indexOf(t) >= 0);
      el.hidden = !ok;
      if (ok) n += 1;
    });
    count.textContent = n + " shown.";
  }
  show.addEventListener("change", apply);
  q.addEventListener("input", apply);
})();
