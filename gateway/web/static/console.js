// Operator console: the pages work without this script; it only makes the resolve forms clearer.
// On each exception's form, the references field is offered only when "match by hand" is chosen.
"use strict";
(function () {
  document.querySelectorAll("form.resolve").forEach(function (form) {
    var refs = form.querySelector("input[name=references]");
    if (!refs) { return; }
    var label = form.querySelector("label[for='" + refs.id + "']");
    function sync() {
      var chosen = form.querySelector("input[name=action]:checked");
      var show = chosen !== null && chosen.value === "match";
      refs.hidden = !show;
      if (label) { label.hidden = !show; }
    }
    form.querySelectorAll("input[name=action]").forEach(function (radio) { radio.addEventListener("change", sync); });
    sync();
  });
})();
