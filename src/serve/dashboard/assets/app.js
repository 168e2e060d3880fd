// Live regions: an element with data-live="URL" is replaced by that URL's fragment every two
// seconds until the fragment carries data-done. Buttons with data-post="URL" POST there and
// reload the page. No framework, no build step.
(function () {
  function refresh(el) {
    var url = el.getAttribute("data-live");
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html;
        var next = box.firstElementChild;
        if (!next) return;
        el.replaceWith(next);
        if (next.hasAttribute("data-live") && !next.hasAttribute("data-done")) {
          setTimeout(function () { refresh(next); }, 2000);
        }
      })
      .catch(function () { setTimeout(function () { refresh(el); }, 4000); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!el.hasAttribute("data-done")) setTimeout(function () { refresh(el); }, 2000);
    });
    document.querySelectorAll("[data-post]").forEach(function (b) {
      b.addEventListener("click", function () {
        b.disabled = true;
        fetch(b.getAttribute("data-post"), { method: "POST", credentials: "same-origin" })
          .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
          .then(function (res) {
            if (!res[0]) alert(res[1].error ? res[1].error.message : "failed");
            location.reload();
          });
      });
    });
  });
})();
