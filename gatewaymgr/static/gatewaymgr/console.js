// Gateway Manager console: small improvements on pages that work without script.
// The Content-Security-Policy allows no inline script, so everything lives here.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const summary = document.getElementById("error-summary");
  if (!summary) return;
  // autofocus already moves focus here in current browsers; this covers the others.
  if (document.activeElement === document.body) summary.focus();
  // A link in the summary focuses its field and shows the field's label above it, rather
  // than scrolling the input to the very top of the window with its label cut off.
  summary.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='#']");
    if (!link) return;
    const target = document.getElementById(link.getAttribute("href").slice(1));
    if (!target) return;
    event.preventDefault();
    const field = target.matches("input, select, textarea, button")
      ? target
      : target.querySelector("input, select, textarea") || target;
    (target.closest(".field, .checkbox") || target).scrollIntoView({ block: "start" });
    field.focus({ preventScroll: true });
  });
});
