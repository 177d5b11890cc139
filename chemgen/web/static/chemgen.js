// chemgen web: follow a job's progress, sort and filter a table, show one structure at a time in 3Dmol.js.
// No framework and no build step; the page works without JavaScript, this only adds live updates and views.
const chemgen = {
  followJob() {
    const status = document.getElementById("status");
    if (!status || status.dataset.finished === "true") return;
    const poll = async () => {
      try {
        const reply = await fetch(`/api/jobs/${status.dataset.job}`);
        if (reply.ok) {
          const job = await reply.json();
          document.getElementById("state").textContent = job.state;
          document.getElementById("state").className = `state state-${job.state}`;
          document.getElementById("message").textContent = job.message || "";
          const bar = document.getElementById("progress");
          if (bar && job.progress !== null) bar.value = job.progress;
          if (["completed", "failed", "crashed"].includes(job.state)) { window.location.reload(); return; }
        }
      } catch (error) { /* the server may be restarting: try again */ }
      setTimeout(poll, 2000);
    };
    setTimeout(poll, 1500);
  },

  table() {
    const table = document.getElementById("candidates");
    if (!table) return;
    const body = table.tBodies[0];
    const headers = [...table.tHead.rows[0].cells];
    headers.forEach((th, column) => th.addEventListener("click", () => {
      const ascending = !th.classList.contains("sorted-asc");
      headers.forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      const numeric = th.dataset.type === "number";
      const key = (row) => {
        const text = row.cells[column].textContent.trim();
        if (!numeric) return text;
        return text === "" ? Infinity : parseFloat(text);
      };
      const rows = [...body.rows].sort((a, b) => {
        const [x, y] = [key(a), key(b)];
        const order = numeric ? x - y : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach((row) => body.appendChild(row));
    }));
    const filter = document.getElementById("filter");
    const metastable = document.getElementById("only-metastable");
    const sun = document.getElementById("only-sun");
    const apply = () => {
      const words = filter.value.toLowerCase().trim();
      let shown = 0;
      for (const row of body.rows) {
        const visible = (!words || row.textContent.toLowerCase().includes(words))
          && (!metastable.checked || row.dataset.metastable === "True")
          && (!sun.checked || row.dataset.sun === "True");
        row.hidden = !visible;
        shown += visible;
      }
      document.getElementById("shown").textContent = `${shown} of ${body.rows.length} shown`;
    };
    [filter, metastable, sun].forEach((input) => input.addEventListener("input", apply));
    apply();
  },

  viewer(format) {
    const element = document.getElementById("viewer3d");
    if (!element || typeof $3Dmol === "undefined") return;
    const viewer = $3Dmol.createViewer(element, { backgroundColor: "white" });
    const structures = JSON.parse((document.getElementById("structures") || {}).textContent || "[]");
    const show = (text, caption) => {
      viewer.clear();
      const model = viewer.addModel(text, format);
      viewer.setStyle({}, { stick: { radius: 0.15 }, sphere: { scale: 0.25 } });
      if (format === "cif") { viewer.addUnitCell(model); viewer.replicateUnitCell(1, 1, 1, model); }
      viewer.zoomTo();
      viewer.render();
      document.getElementById("viewer-caption").textContent = caption;
      element.dataset.shown = caption;
    };
    for (const button of document.querySelectorAll("button.show3d")) {
      button.addEventListener("click", async () => {
        if (button.dataset.url) {
          const reply = await fetch(button.dataset.url);
          show(await reply.text(), button.dataset.label || "");
        } else {
          const index = Number(button.dataset.index);
          show(structures[index], `candidate ${index + 1}`);
        }
      });
    }
    const first = document.querySelector("button.show3d");
    if (first) first.click();
  },
};
