// Upload page: refuse a file over the limit before sending it (the server refuses it too), and show the
// "other licence" field only when it is chosen.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var limit = Number(form.getAttribute("data-limit"));
  var file = document.getElementById("file"), err = document.getElementById("size-error");
  var lic = document.getElementById("licence"), other = document.getElementById("licence_other");
  function otherShown() {
    var on = lic.value === "other";
    other.required = on;
    other.parentNode && (other.disabled = !on);
  }
  lic.addEventListener("change", otherShown);
  otherShown();
  function tooBig() {
    var f = file.files && file.files[0];
    if (f && f.size > limit) {
      err.textContent = "That file is " + (f.size / 1e6).toFixed(0) + " MB, larger than your limit of " +
        form.getAttribute("data-limit-text") + ". Split it, or ask an admin for a higher limit.";
      err.hidden = false;
      return true;
    }
    if (f && f.size === 0) {
      err.textContent = "That file is empty.";
      err.hidden = false;
      return true;
    }
    err.hidden = true;
    return false;
  }
  file.addEventListener("change", tooBig);
  // a file dropped anywhere on the form is the file to upload (the input stays the keyboard's way in)
  form.addEventListener("dragover", function (e) { e.preventDefault(); form.classList.add("dropping"); });
  form.addEventListener("dragleave", function () { form.classList.remove("dropping"); });
  form.addEventListener("drop", function (e) {
    e.preventDefault();
    form.classList.remove("dropping");
    if (e.dataTransfer && e.dataTransfer.files.length) { file.files = e.dataTransfer.files; tooBig(); }
  });
  form.addEventListener("submit", function (e) { if (tooBig()) { e.preventDefault(); file.focus(); } });
})();
