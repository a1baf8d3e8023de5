// Playground: the reply streams in as OpenAI chat chunks (SSE) from /runs/<id>/chat, as the signed-in key
// (the server adds the key; the page only sends its CSRF token). Text only, never HTML. Copy buttons.
(function () {
  "use strict";
  var form = document.getElementById("chat-form"), log = document.getElementById("chat-log");
  var box = document.getElementById("message"), err = document.getElementById("chat-error");
  var csrf = form.querySelector("input[name=csrf]").value, url = form.getAttribute("data-chat");
  var history = JSON.parse(form.querySelector("input[name=history]").value || "[]");
  function line(role, text) {
    var p = document.createElement("p"), r = document.createElement("span");
    p.className = "msg"; r.className = "role"; r.textContent = role;
    p.appendChild(r); p.appendChild(document.createTextNode(" " + text));
    log.appendChild(p);
    return p;
  }
  function withInstruction() {
    var sys = document.getElementById("system").value.trim();
    return sys ? [{ role: "system", content: sys }].concat(history) : history;
  }
  form.addEventListener("submit", function (e) {
    if (!window.fetch || !window.TextDecoder) return;  // the form posts; the answer comes in one piece
    e.preventDefault();
    var text = box.value.trim();
    if (!text) return;
    err.hidden = true;
    history.push({ role: "user", content: text });
    line("user", text);
    box.value = "";
    var out = line("assistant", ""), answer = "", send = document.getElementById("send");
    send.disabled = true;
    fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
                 body: JSON.stringify({ messages: withInstruction() }), credentials: "same-origin" })
      .then(function (res) {
        if (!res.ok) return res.json().then(function (j) { throw new Error(j.error ? j.error.message : res.statusText); });
        var reader = res.body.getReader(), dec = new TextDecoder(), buf = "";
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) return;
            buf += dec.decode(r.value, { stream: true });
            var parts = buf.split("\n\n");
            buf = parts.pop();
            parts.forEach(function (ev) {
              ev.split("\n").forEach(function (l) {
                if (l.indexOf("data: ") !== 0 || l === "data: [DONE]") return;
                var chunk = JSON.parse(l.slice(6));
                if (chunk.error) throw new Error(chunk.error.message);
                var d = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
                if (d && d.content) { answer += d.content; out.lastChild.textContent = " " + answer; }
              });
            });
            return pump();
          });
        }
        return pump();
      })
      .then(function () { history.push({ role: "assistant", content: answer }); out.setAttribute("data-done", "1"); })
      .catch(function (x) { err.textContent = "The model could not answer: " + x.message; err.hidden = false; history.pop(); })
      .then(function () { send.disabled = false; form.querySelector("input[name=history]").value = JSON.stringify(history); });
  });
  Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (b) {
    b.addEventListener("click", function () {
      var text = document.getElementById(b.getAttribute("data-copy")).textContent;
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(function () { b.textContent = "Copied"; });
    });
  });
})();
