"use strict";
// Submit: the YAML goes to the server as text; a 422 lists each error with the spec line and
// the field path the API names; success opens the new job's page.
(function () {
  const form = document.getElementById("submit-form");
  const text = document.getElementById("spec");
  const box = document.getElementById("errors");
  const rows = document.getElementById("error-rows");
  const button = document.getElementById("submit-button");

  function selectLine(line) {
    const lines = text.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function showErrors(detail) {
    rows.textContent = "";
    const errors = Array.isArray(detail) ? detail : [{ loc: ["body"], msg: String(detail), line: null }];
    for (const error of errors) {
      const tr = document.createElement("tr");
      tr.className = "field-error";
      const lineCell = document.createElement("td");
      if (error.line) {
        const link = document.createElement("a");
        link.className = "line";
        link.textContent = String(error.line);
        link.addEventListener("click", () => selectLine(error.line));
        lineCell.appendChild(link);
      }
      const path = document.createElement("td");
      const code = document.createElement("code");
      const loc = (error.loc || []).filter((part, i) => !(i === 0 && part === "body"));
      code.textContent = loc.length ? loc.join(".") : "(the spec)";
      path.appendChild(code);
      const message = document.createElement("td");
      message.textContent = error.msg;
      tr.append(lineCell, path, message);
      rows.appendChild(tr);
    }
    box.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const answer = await sgmim.post("/submit", { spec_yaml: text.value });
    button.disabled = false;
    if (answer.status === 201) {
      window.location.assign(`/jobs/${answer.data.id}`);
      return;
    }
    showErrors(answer.data ? answer.data.detail : `HTTP ${answer.status}`);
  });
})();
