// pipemake serve: live Now page (server-sent events) and the Dataset page's curation actions.
"use strict";
(function () {
  function toast(text) {
    let t = document.getElementById("toast");
    if (!t) { t = document.createElement("div"); t.id = "toast"; document.body.appendChild(t); }
    t.textContent = text; t.style.display = "block";
    setTimeout(function () { t.style.display = "none"; }, 4000);
  }

  const now = document.getElementById("now");
  if (now && window.EventSource) {
    const source = new EventSource("/api/now/stream");
    source.onmessage = function (msg) { now.innerHTML = JSON.parse(msg.data).html; };
  }

  function stage() { return decodeURIComponent(location.pathname.split("/")[2] || ""); }

  function post(body) {
    body.stage = stage();
    return fetch("/api/curate", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body), credentials: "same-origin",
    }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { toast(data.error || ("error " + r.status)); return; }
        toast("saved to " + data.file + ": run pipemake build");
        location.reload();
      });
    });
  }

  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button");
    if (!b) return;
    const fig = b.closest("figure.thumb");
    const group = b.closest("section.group");
    if (b.classList.contains("rename")) {
      post({action: "rename", cluster: group.dataset.cluster, name: group.querySelector(".newname").value});
    } else if (b.classList.contains("merge")) {
      const into = group.querySelector(".mergewith").value;
      if (into) post({action: "merge", cluster: group.dataset.cluster, into: into});
    } else if (b.classList.contains("reject")) {
      post({action: "reject", id: fig.dataset.id});
    } else if (b.classList.contains("undo")) {
      post({action: "unassign", id: fig.dataset.id});
    } else if (b.classList.contains("savecap")) {
      post({action: "caption", id: fig.dataset.id, text: fig.querySelector(".caption").value});
    }
  });
  document.addEventListener("change", function (ev) {
    const s = ev.target;
    if (s.classList && s.classList.contains("moveto") && s.value) {
      post({action: "move", id: s.closest("figure.thumb").dataset.id, to: s.value});
    }
  });
})();
